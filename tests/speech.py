"""Speech for tests and benchmarks: human recordings with transcripts, synthetic speech, WER.

Human recordings come from the Debian package pocketsphinx-testdata (16 kHz mono WAV with
reference transcripts); synthetic speech from espeak-ng, which speaks many languages offline.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import unicodedata
from pathlib import Path

import numpy as np

from voxloop.audio.pcm import read_wav, resample

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")


def espeak_wav(text: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns mono float32 audio and its rate (22050 Hz)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    return read_wav(wav)


def espeak_16k(text: str, voice: str = "en-us") -> np.ndarray:
    audio, rate = espeak_wav(text, voice)
    return resample(audio, rate, 16000)


def pocketsphinx_samples() -> list[tuple[Path, str]]:
    """Every human recording in pocketsphinx-testdata that has a reference transcript."""
    samples = []
    for corpus in ("cards", "librivox"):
        folder = POCKETSPHINX_DATA / corpus
        transcription = folder / ("cards.transcription" if corpus == "cards" else "transcription")
        # Lines look like "<s> ten of clubs </s> (001)".
        for line in transcription.read_text().splitlines():
            match = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*", line)
            if match:
                samples.append((folder / f"{match.group(2)}.wav", " ".join(match.group(1).split())))
    return samples


def load_16k(path: Path) -> np.ndarray:
    audio, rate = read_wav(path.read_bytes())
    return resample(audio, rate, 16000)


SPANISH_PROMPT = "Eres un asistente útil. Responde siempre con una frase completa, de unas diez palabras."
# Words any Spanish sentence about a capital is likely to hold, and English ones a Spanish reply never
# does: a reply's language is checked, never its exact words.
SPANISH_WORDS = {"es", "el", "la", "los", "las", "de", "del", "en", "un", "una", "que", "y", "capital"} | {
    "madrid",
    "parís",
    "francia",
}
ENGLISH_WORDS = {"the", "is", "of", "and", "what", "city"}

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(token: str) -> list[str]:
    """'10' -> ['ten'], '42' -> ['forty', 'two']: Whisper writes digits where people said words."""
    value = int(token)
    if value < 20:
        return [_ONES[value]]
    if value < 100:
        return [_TENS[value // 10]] + ([_ONES[value % 10]] if value % 10 else [])
    return [token]


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation; hyphens split words; numbers below 100 as words."""
    text = re.sub(r"['’]", "", text.lower())
    words = re.sub(r"[^\w\s]|_", " ", text).split()
    return [spoken for word in words for spoken in (_number_words(word) if word.isdigit() else [word])]


def _folded(text: str) -> str:
    """Normalised words without accents, joined: "¡París, 2!" -> "paris two"."""
    words = " ".join(normalize_words(text))
    return "".join(c for c in unicodedata.normalize("NFKD", words) if not unicodedata.combining(c))


def mentions(text: str, *names: str) -> bool:
    """Whether ``text`` names any of ``names``, however a small model or Whisper writes it: case,
    accents, punctuation, digits and word endings aside ("París." and "Paris's" name "paris")."""
    said = _folded(text)
    return any(_folded(name) in said for name in names)


def _edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, 1):
        current = [i]
        for j, hyp_item in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance divided by the number of reference words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    return _edit_distance(ref, hyp) / max(len(ref), 1)


def character_error_rate(reference: str, hypothesis: str) -> float:
    """Character-level edit distance over the normalized words: fairer than WER where a formant
    voice (eSpeak NG) blurs one sound of a word and the STT writes the whole word wrong."""
    ref, hyp = " ".join(normalize_words(reference)), " ".join(normalize_words(hypothesis))
    return _edit_distance(list(ref), list(hyp)) / max(len(ref), 1)


def _voice_features(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Unit-length, mean-normalised log energies in 24 log-spaced bands per 25 ms frame of speech."""
    size, hop = rate // 40, rate // 100
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(audio, np.float64), size)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(size), axis=-1)) ** 2
    energy = power.sum(axis=1)
    power = power[energy > energy.max() * 1e-3]  # silence between sentences says nothing of the voice
    edges = (np.geomspace(100.0, 7600.0, 25) * size / rate).astype(int)
    bands = np.stack([power[:, a : max(b, a + 1)].sum(axis=1) for a, b in itertools.pairwise(edges)], 1)
    logs = np.log(bands + 1e-9)
    logs -= logs.mean(axis=0)
    return logs / (np.linalg.norm(logs, axis=1, keepdims=True) + 1e-9)


def voice_distance(heard: np.ndarray, reference: np.ndarray) -> float:
    """Spectral distance of two 16 kHz readings after dynamic time warping, per step of the path.

    The same text read by the same eSpeak voice scores ~0.02-0.03; by another variant of that
    language's voice ~0.08; by another language's voice 0.13-0.23. It tells which voice spoke a
    reply even where Whisper cannot read the words back.
    """
    a, b = _voice_features(heard), _voice_features(reference)
    cost = 1.0 - a @ b.T
    total = np.full(len(b) + 1, np.inf)
    total[0] = 0.0
    for row in cost:  # classic DTW, one row of the accumulated-cost matrix at a time
        diagonal_or_up = np.minimum(total[1:], total[:-1]) + row
        current = np.empty_like(total)
        current[0] = np.inf
        for j, value in enumerate(diagonal_or_up, 1):
            current[j] = min(value, current[j - 1] + row[j - 1])
        total = current
    return float(total[-1] / (len(a) + len(b)))
