"""Lip-sync visemes for a chunk of synthesised speech, as Lokutor sends them: {"v": id, "c": char, "t": s}.

Ids are the 15 Oculus/OVR visemes (0 sil, 1 PP, 2 FF, 3 TH, 4 DD, 5 kk, 6 CH, 7 SS, 8 nn, 9 RR,
10 aa, 11 E, 12 ih, 13 oh, 14 ou). None of the engines reports phoneme timing, so letters are
mapped to visemes by spelling and spread over the chunk: over its voiced frames when the audio is
given (the mouth then closes where the speaker actually pauses), else evenly, pausing at
punctuation.
"""

from __future__ import annotations

import itertools
import unicodedata

import numpy as np

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")
_ID = {name: number for number, name in enumerate(VISEMES)}

_DIGRAPHS = {"th": "TH", "ch": "CH", "sh": "CH", "ph": "FF", "qu": "kk", "ll": "nn",
             **{f"c{vowel}": "SS" for vowel in "eiy"}}  # fmt: skip
_LETTERS = {
    **dict.fromkeys("pbm", "PP"), **dict.fromkeys("fv", "FF"), **dict.fromkeys("td", "DD"),
    **dict.fromkeys("ckgqx", "kk"), **dict.fromkeys("j", "CH"), **dict.fromkeys("szçß", "SS"),
    **dict.fromkeys("nlñ", "nn"), "r": "RR", "a": "aa", "e": "E", **dict.fromkeys("iy", "ih"),
    "o": "oh", **dict.fromkeys("uw", "ou"),
}  # fmt: skip
# Hangul syllables decompose arithmetically into lead consonant, vowel and optional final.
_HANGUL_LEAD = ("kk", "kk", "nn", "DD", "DD", "RR", "PP", "PP", "PP", "SS", "SS", None, "CH", "CH", "CH",
                "kk", "DD", "PP", None)  # fmt: skip
_HANGUL_VOWEL = ("aa", "E", "aa", "E", "oh", "E", "oh", "E", "oh", "aa", "E", "E", "oh", "ou", "oh", "E",
                 "ih", "ou", "ih", "ih", "ih")  # fmt: skip
_HANGUL_FINAL = (None, "kk", "kk", "kk", "nn", "nn", "nn", "DD", "nn", "kk", "PP", "nn", "nn", "nn", "PP",
                 "nn", "PP", "PP", "PP", "DD", "DD", "nn", "DD", "DD", "kk", "DD", "PP", "DD")  # fmt: skip

VOWEL_WEIGHT, CONSONANT_WEIGHT, DIGIT_WEIGHT = 1.0, 0.6, 2.0  # relative time a letter takes
PAUSE_WEIGHTS = {",": 1.5, ";": 1.5, ":": 1.5, ".": 2.0, "!": 2.0, "?": 2.0, "…": 2.0}  # without audio
VOICED_DB = -40.0  # 10 ms frames within this of the loudest are speech
MIN_PAUSE_S = 0.08  # quieter stretches shorter than this are consonants or stops, not pauses
FRAME_S = 0.01


def _graphemes(text: str, with_pauses: bool) -> list[tuple[int, str, float]]:
    """(viseme id, source characters, weight) in reading order; id 0 is a pause at punctuation."""
    out: list[tuple[int, str, float]] = []
    i = 0
    while i < len(text):
        char, lower = text[i], text[i].lower()
        pair = text[i : i + 2].lower()
        if pair in _DIGRAPHS:
            out.append((_ID[_DIGRAPHS[pair]], text[i : i + 2], CONSONANT_WEIGHT))
            i += 2
            continue
        i += 1
        if 0xAC00 <= ord(char) <= 0xD7A3:
            index = ord(char) - 0xAC00
            parts = (_HANGUL_LEAD[index // 588], _HANGUL_VOWEL[index % 588 // 28], _HANGUL_FINAL[index % 28])
            out += [(_ID[name], char, VOWEL_WEIGHT / 2) for name in parts if name]
            continue
        base = lower if lower in _LETTERS else unicodedata.normalize("NFD", lower)[:1]  # é -> e
        if base in _LETTERS:
            name = _LETTERS[base]
            weight = VOWEL_WEIGHT if name in ("aa", "E", "ih", "oh", "ou") else CONSONANT_WEIGHT
            out.append((_ID[name], char, weight))
        elif char.isdigit():  # spoken as a word: an open mouth for a while
            out.append((_ID["aa"], char, DIGIT_WEIGHT))
        elif with_pauses and char in PAUSE_WEIGHTS:
            out.append((0, char, PAUSE_WEIGHTS[char]))
    return out


def _voiced_frames(audio: np.ndarray, frame: int) -> np.ndarray:
    """Mask of 10 ms frames that carry speech, pauses shorter than MIN_PAUSE_S filled in."""
    count = len(audio) // frame
    rms = np.sqrt(np.mean(np.square(audio[: count * frame].reshape(count, frame)), axis=1))
    if count == 0 or rms.max() < 1e-5:
        return np.zeros(count, bool)
    voiced = rms >= rms.max() * 10 ** (VOICED_DB / 20)
    on = np.flatnonzero(voiced)
    for left, right in itertools.pairwise(on):
        if 1 < right - left <= round(MIN_PAUSE_S / FRAME_S):
            voiced[left:right] = True
    return voiced


def visemes_for(
    text: str, duration_s: float, offset_s: float = 0.0, audio: np.ndarray | None = None
) -> list[dict]:
    """Visemes for ``text`` spoken over ``duration_s`` seconds from ``offset_s`` (the chunk's start
    in the stream).

    ``audio`` is the chunk's samples (their rate is ``len(audio) / duration_s``); with it, letters go
    over the voiced frames only and a "sil" marks each real pause. Either way a final "sil" marks the
    end of speech, and times are non-decreasing and within [offset_s, offset_s + duration_s].
    """
    if duration_s <= 0:
        return []
    if audio is not None and len(audio):
        frame = max(1, round(len(audio) / duration_s * FRAME_S))
        voiced, frame_s = _voiced_frames(audio, frame), duration_s * frame / len(audio)
        graphemes = _graphemes(text, with_pauses=False)  # the audio shows where the pauses are
    else:
        count = max(1, round(duration_s / FRAME_S))
        voiced, frame_s = np.ones(count, bool), duration_s / count
        graphemes = _graphemes(text, with_pauses=True)
    on = np.flatnonzero(voiced)
    if not graphemes or on.size == 0:
        return [{"v": 0, "c": " ", "t": round(offset_s, 3)}]
    weights = np.array([weight for _, _, weight in graphemes])
    starts = (np.cumsum(weights) - weights) / weights.sum()  # where each grapheme begins, 0..1
    events = [
        (on[int(start * on.size)] * frame_s, v, c) for start, (v, c, _) in zip(starts, graphemes, strict=True)
    ]
    # Pauses in the audio, and the end of speech, close the mouth.
    events += [(end * frame_s, 0, " ") for end in np.flatnonzero(voiced[:-1] & ~voiced[1:]) + 1]
    if voiced[-1]:
        events.append((len(voiced) * frame_s, 0, " "))
    events.sort(key=lambda event: event[0])
    end = offset_s + duration_s
    return [{"v": int(v), "c": c, "t": round(float(min(offset_s + t, end)), 3)} for t, v, c in events]
