"""The voice table and the one text-to-speech facade the rest of voxloop uses.

Lokutor's voice ids (F1-F5 female, M1-M5 male; also ``en_f1`` / ``esca_m2`` style names) resolve by
language: English gets the neural voices (F*: Hibari, M*: Piper joe), every other language an
espeak-ng formant voice of that gender. Voices 2-5 of a neural family are the same speaker shifted
by -2..+2 semitones, so a client that offers five voices gets five audibly different ones.
docs/voices.md documents the table.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from voxloop.audio.pcm import StreamResampler, resample
from voxloop.backends.tts.base import SpeechChunk, SpeechEngine, Voice
from voxloop.backends.tts.espeak_tts import EspeakEngine
from voxloop.backends.tts.hibari_tts import HibariEngine
from voxloop.backends.tts.piper_tts import PiperEngine
from voxloop.config import Settings

# Language -> espeak-ng voice. Base codes only: "pt" is Brazilian, "es" is Spain's Spanish.
# Tigrinya is written in the Ge'ez script, which the Amharic voice reads. Somali has no eSpeak
# voice: Oromo's is the nearest that reads its Latin spelling (a fellow Cushitic language with the
# same conventions: doubled letters for long vowels, "dh", "x" and "c" as consonants).
ESPEAK_VOICES = {
    "en": "en-us", "es": "es", "fr": "fr", "pt": "pt-br", "ko": "ko",
    "it": "it", "de": "de", "ca": "ca", "eu": "eu", "id": "id", "nl": "nl", "pl": "pl",
    "ru": "ru", "tr": "tr", "am": "am", "om": "om", "ti": "am", "so": "om",
}  # fmt: skip
NEURAL_LANGUAGE = "en"
STYLES = range(1, 6)
SEMITONES = {1: 0.0, 2: 1.0, 3: -1.0, 4: 2.0, 5: -2.0}  # neural variants; espeak has its own f1-f5/m1-m5
ACCEPTED_SPEED = (0.25, 4.0)  # outside: ValueError
USABLE_SPEED = (0.5, 2.0)  # where every engine still sounds right: accepted speeds are clamped to it
MAX_PIECE_CHARS = 300  # longer sentences are cut at clauses, then words

_LOKUTOR_ID = re.compile(r"(?:(?:en|esca)_)?([fm])([1-5])")


class UnknownVoice(ValueError):
    """A voice id that is in no table."""


class UnknownLanguage(ValueError):
    """A language no voice (or not the chosen voice) speaks."""


@dataclass(frozen=True)
class _Entry:
    voice: Voice
    engine: str  # "hibari", "piper" or an espeak voice name such as "es+f3"
    semitones: float = 0.0


def _neural_id(family: str, n: int) -> str:
    return family if n == 1 else f"{family}-{n}"


def _table() -> list[_Entry]:
    entries = []
    for family, name, gender, engine in (
        ("hibari", "Hibari Heart", "female", "hibari"),
        ("piper-joe", "Piper Joe", "male", "piper"),
    ):
        for n in STYLES:
            shift = f" ({SEMITONES[n]:+g} semitones)" if SEMITONES[n] else ""
            voice = Voice(_neural_id(family, n), name + shift, gender, (NEURAL_LANGUAGE,), engine)
            entries.append(_Entry(voice, engine, SEMITONES[n]))
    for lang, espeak_name in ESPEAK_VOICES.items():
        for gender in ("female", "male"):
            for n in STYLES:
                variant = f"{gender[0]}{n}"
                voice = Voice(
                    f"espeak-{lang}-{variant}", f"eSpeak NG {lang} {gender} {n}", gender, (lang,), "espeak"
                )
                entries.append(_Entry(voice, f"{espeak_name}+{variant}"))
    return entries


def normalize_language(code: str) -> str:
    """The base code: "en-US", "EN" and "en_gb" are all "en"."""
    return re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]


LONG_NUMBER = re.compile(r"\d(?:[\d,]*\d)?")
LONGEST_NUMBER_READ = 15  # digits; longer runs (card, account numbers) are read digit by digit
SURROGATE = re.compile("[\ud800-\udfff]")


def speakable(text: str) -> str:
    """Text every engine can take: no lone surrogates (eSpeak encodes to UTF-8), and no number
    past hibari's largest scale (more than 36 digits fails in its number reader)."""

    def digits(match: re.Match[str]) -> str:
        number = match.group()
        count = sum(char.isdigit() for char in number)
        return " ".join(c for c in number if c.isdigit()) if count > LONGEST_NUMBER_READ else number

    return LONG_NUMBER.sub(digits, SURROGATE.sub(" ", text))


class Speaker:
    """All voices behind one interface; engines load on first use (or in ``warmup``), once per process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._entries = _table()
        self._by_id = {entry.voice.id: entry for entry in self._entries}
        for lang in ESPEAK_VOICES:  # "espeak-es": espeak's usual (male) voice
            self._by_id[f"espeak-{lang}"] = self._by_id[f"espeak-{lang}-m1"]
        self._by_style = {
            (lang, g, n): self._by_id[self._style_id(lang, g, n)]
            for lang in ESPEAK_VOICES
            for g in "fm"
            for n in STYLES
        }
        self._engines: dict[str, SpeechEngine] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _style_id(lang: str, g: str, n: int) -> str:
        if lang == NEURAL_LANGUAGE:
            return _neural_id("hibari" if g == "f" else "piper-joe", n)
        return f"espeak-{lang}-{g}{n}"

    def voices(self) -> list[Voice]:
        return [entry.voice for entry in self._entries]

    def languages(self) -> list[str]:
        return list(ESPEAK_VOICES)

    def _language(self, code: str) -> str:
        lang = normalize_language(code)
        if lang not in ESPEAK_VOICES:
            raise UnknownLanguage(f"unsupported language {code!r}; supported: {', '.join(ESPEAK_VOICES)}")
        return lang

    def resolve(self, voice_id: str | None = None, language: str | None = None) -> Voice:
        """A voice from a Lokutor id (F1, m3, en_f1, esca_m2: gender and number) or an engine id.

        Lokutor ids take the language (default: settings.default_language); an engine id such as
        "espeak-fr-f2" fixes it, and a ``language`` it does not speak is an error.
        """
        key = (voice_id or self._settings.default_voice).strip().lower()
        style = _LOKUTOR_ID.fullmatch(key)
        if style:
            lang = self._language(language or self._settings.default_language)
            return self._by_style[(lang, style[1], int(style[2]))].voice
        entry = self._by_id.get(key)
        if entry is None:
            raise UnknownVoice(
                f"unknown voice {voice_id!r}; use F1-F5 or M1-M5 (also en_f1..en_m5, esca_f1..esca_m5), "
                f"hibari[-2..5], piper-joe[-2..5] or espeak-<language>-f1..f5/m1..m5 "
                f"with a language among {', '.join(ESPEAK_VOICES)}"
            )
        if language is not None:
            self.language_of(language, entry.voice)
        return entry.voice

    def language_of(self, language: str | None, voice: Voice) -> str:
        """The base code to synthesise in: ``language`` if given (it must be one the voice speaks),
        else the default language where the voice speaks it, else the voice's own."""
        if not language:
            default = normalize_language(self._settings.default_language)
            return default if default in voice.languages else voice.languages[0]
        lang = self._language(language)
        if lang not in voice.languages:
            raise UnknownLanguage(
                f"voice {voice.id!r} speaks {', '.join(voice.languages)}, not {language!r}; "
                "use F1-F5/M1-M5 to get a voice for any supported language"
            )
        return lang

    def catalogue(self) -> list[dict]:
        """Every voice id a client may send: Lokutor's ten (with their en_/esca_ aliases and the voice
        each one is per language), then the engine voices."""
        styles = [
            {
                "id": f"{g.upper()}{n}",
                "aliases": [f"en_{g}{n}", f"esca_{g}{n}"],
                "name": f"{gender.title()} {n}",
                "gender": gender,
                "languages": {lang: self._by_style[(lang, g, n)].voice.id for lang in ESPEAK_VOICES},
            }
            for g, gender in (("f", "female"), ("m", "male"))
            for n in STYLES
        ]
        engines = [
            {
                "id": v.id,
                "name": v.name,
                "gender": v.gender,
                "languages": list(v.languages),
                "engine": v.engine,
            }
            for v in self.voices()
        ]
        return styles + engines

    def _engine(self, name: str) -> SpeechEngine:
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                threads = self._settings.tts_threads
                if name == "hibari":
                    engine = HibariEngine(threads)
                elif name == "piper":
                    engine = PiperEngine(self._settings.cache_dir, threads)
                else:
                    engine = EspeakEngine(name)
                self._engines[name] = engine
            return engine

    def synthesize(self, text: str, voice: Voice, language: str, speed: float = 1.0) -> Iterator[SpeechChunk]:
        """Audio sentence by sentence (the first one cut at a clause where that speeds up the start).

        Arguments are checked at once; the returned generator then synthesises as it is iterated.
        """
        entry = self._by_id.get(voice.id)
        if entry is None:
            raise UnknownVoice(f"unknown voice {voice.id!r}")
        self.language_of(language, voice)
        if not text.strip():
            raise ValueError("text to speak is empty")
        if len(text) > self._settings.max_tts_chars:
            raise ValueError(f"text is {len(text)} characters; the limit is {self._settings.max_tts_chars}")
        low, high = ACCEPTED_SPEED
        if not low <= speed <= high:
            raise ValueError(f"speed must be within {low}-{high} (1.0 is normal), not {speed}")
        return self._stream(text, entry, min(max(speed, USABLE_SPEED[0]), USABLE_SPEED[1]))

    def _stream(self, text: str, entry: _Entry, speed: float) -> Iterator[SpeechChunk]:
        text = speakable(text)
        engine = self._engine(entry.engine)
        ratio = 2.0 ** (entry.semitones / 12.0)
        for index, piece in enumerate(speech_pieces(text, engine.first_chunk_chars)):
            if index == 0 and isinstance(engine, PiperEngine) and engine.streamed:
                yield from _streamed(engine, piece, speed, ratio)
                continue
            # A pitch variant is rendered slower by `ratio`, then played faster by it.
            audio = engine.speak(piece, speed / ratio)
            if ratio != 1.0:
                audio = resample(audio, round(engine.sample_rate * ratio), engine.sample_rate)
            # A piece cut mid-clause runs on into the next one; one that ends a clause pauses.
            tail = KEEP_TAIL_S if piece[-1] in PAUSING else JOIN_TAIL_S
            audio = level(trim_silence(audio, engine.sample_rate, tail), engine.sample_rate)
            if audio.size:
                yield SpeechChunk(audio, engine.sample_rate, piece)

    def warmup(self) -> None:
        """Load every engine and run each once, so the first request is as fast as the next."""
        default = self.resolve()
        for voice in (
            default,
            *(self._by_id[name].voice for name in ("hibari", "piper-joe", "espeak-es-f1")),
        ):
            for _ in self.synthesize("Hello.", voice, voice.languages[0]):
                pass


def _streamed(engine: PiperEngine, piece: str, speed: float, ratio: float) -> Iterator[SpeechChunk]:
    """Piper's first piece span by span (``PiperEngine.stream``), so its first audio does not wait
    for the whole piece. The piece's level is not known at its first span, so Piper's usual gain
    applies (less on a span that would pass PEAK_LIMIT); its own short lead and tail silences stay."""
    rate = engine.sample_rate
    shift = StreamResampler(round(rate * ratio), rate)  # a pitch variant, as in Speaker._stream
    for index, span in enumerate(engine.stream(piece, speed / ratio)):
        audio = fade(shift.process(span.audio, last=span.last), rate, head=index == 0, tail=span.last)
        peak = float(np.abs(audio).max(initial=0.0))
        audio *= min(engine.stream_gain, PEAK_LIMIT / max(peak, 1e-6))
        if audio.size:
            yield SpeechChunk(audio, rate, span.text)


# --- text: sentences and pieces -------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’»)\]]*(?=\s|$)")
_CLAUSE_END = re.compile(r"(?<=[,;:—–，、])\s+")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "sra", "srta", "st", "jr", "vs", "mme"})


def _is_abbreviation(word: str) -> bool:
    word = word.lstrip("\"'“‘(¿¡")
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper() and word != "I")


def split_sentences(text: str) -> list[str]:
    """Sentences, cut after end punctuation followed by space (not after "Dr." or initials) and at lines."""
    sentences = []
    for line in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(line):
            following = line[match.end() :].lstrip()
            words = line[start : match.start()].split()
            abbreviation = match.group().startswith(".") and bool(words) and _is_abbreviation(words[-1])
            if following and (following[0].islower() or abbreviation):
                continue
            sentences.append(line[start : match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _fit(sentence: str, limit: int) -> list[str]:
    """Cut a sentence longer than ``limit`` at clauses, and clauses still too long at words."""
    if len(sentence) <= limit:
        return [sentence]
    pieces: list[str] = []
    for part in _CLAUSE_END.split(sentence):
        for word in part.split() if len(part) > limit else [part]:
            if pieces and len(pieces[-1]) + 1 + len(word) <= limit:
                pieces[-1] += " " + word
            else:
                pieces.append(word)
    return pieces


# Function words: a phrase starts at one ("Let me check | the weather", "The package | should
# arrive"), so a first piece may end just before one and never on one. Cutting between two content
# words instead ("The quick | brown fox") gives the first piece a sentence's final fall and is
# misheard ("the quake"). English only: the only language of the voice that cuts at words.
_FUNCTION_WORDS = frozenset(
    "a an the to of in on at by for from with about into over under after before and or but nor so "
    "if as than that because while when where my your his her its our their this these those is are "
    "was were be been am will would shall should can could may might must has have had do does did "
    "not i you we they he she it me him us them".split()
)


def _bare(word: str) -> str:
    return word.strip("\"'“”‘’()").lower()


def _word_cut(sentence: str, limit: int) -> int | None:
    """Where to end a first piece of at most ``limit`` characters at a phrase boundary: after a
    content word and before a function word; None if there is no such place."""
    words = list(re.finditer(r"\S+", sentence))
    for word, following in reversed(list(pairwise(words))):
        bare, next_bare = _bare(word.group()), _bare(following.group())
        if word.end() <= limit and next_bare in _FUNCTION_WORDS and bare not in _FUNCTION_WORDS:
            return word.end()
    return None


def speech_pieces(text: str, first_chunk_chars: int, limit: int = MAX_PIECE_CHARS) -> list[str]:
    """The pieces to synthesise one by one: sentences, with a first one longer than
    ``first_chunk_chars`` cut at its last clause end within that length, else at a word boundary
    within it, else at its first clause end."""
    pieces = [piece for sentence in split_sentences(text) for piece in _fit(sentence, limit)]
    first = pieces[0] if pieces else ""
    if len(first) > first_chunk_chars:
        cuts = [match.start() for match in _CLAUSE_END.finditer(first)]
        within = [cut for cut in cuts if cut <= first_chunk_chars]
        cut = within[-1] if within else _word_cut(first, first_chunk_chars) or (cuts[0] if cuts else None)
        if cut:
            pieces[:1] = [first[:cut], first[cut:].strip()]
    return pieces


# --- audio: silence and level ---------------------------------------------------------------------

FRAME_S = 0.01
SILENCE_DB = -50.0  # below the loudest 10 ms frame: silence (the engines pad with near-digital zero)
SPEECH_DB = -30.0  # within this of the loudest frame: speech, for measuring its level
KEEP_LEAD_S, KEEP_TAIL_S = 0.03, 0.2  # silence kept around each piece: a natural pause between pieces
JOIN_TAIL_S = 0.1  # after a piece cut between two words of one clause: a phrase-boundary pause
PAUSING = frozenset(".,;:!?…—–。！？，、\"'”’»)]")
FADE_S = 0.005
TARGET_RMS = 0.1  # -20 dBFS over the speech frames: one level for every engine
PEAK_LIMIT = 0.97


def _frame_size(sample_rate: int) -> int:
    return max(1, round(sample_rate * FRAME_S))


def _frame_rms(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    size = _frame_size(sample_rate)
    count = len(audio) // size
    return np.sqrt(np.mean(np.square(audio[: count * size].reshape(count, size)), axis=1))


def trim_silence(audio: np.ndarray, sample_rate: int, keep_tail: float = KEEP_TAIL_S) -> np.ndarray:
    """Cut the engines' padding (Hibari adds ~0.3 s each side) down to a short lead and tail."""
    rms = _frame_rms(audio, sample_rate)
    if rms.size == 0 or rms.max() < 1e-5:
        return np.zeros(0, np.float32)
    active = np.flatnonzero(rms >= rms.max() * 10 ** (SILENCE_DB / 20))
    size = _frame_size(sample_rate)
    start = max(0, active[0] * size - round(KEEP_LEAD_S * sample_rate))
    end = min(len(audio), (active[-1] + 1) * size + round(keep_tail * sample_rate))
    return fade(audio[start:end], sample_rate)


def fade(audio: np.ndarray, sample_rate: int, head: bool = True, tail: bool = True) -> np.ndarray:
    """``audio`` with FADE_S ramps in at its head and out at its tail, so a cut never clicks."""
    out = audio.astype(np.float32)  # a copy
    size = min(len(out) // 2, round(FADE_S * sample_rate))
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if head:
        out[:size] *= ramp
    if tail:
        out[len(out) - size :] *= ramp[::-1]
    return out


def level(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Scale to TARGET_RMS over the frames within 30 dB of the loudest, never past PEAK_LIMIT."""
    rms = _frame_rms(audio, sample_rate)
    if rms.size == 0 or rms.max() < 1e-5:
        return audio
    speech = rms[rms >= rms.max() * 10 ** (SPEECH_DB / 20)]
    gain = TARGET_RMS / float(np.sqrt(np.mean(np.square(speech))))
    gain = min(gain, PEAK_LIMIT / float(np.max(np.abs(audio))))
    return (audio * gain).astype(np.float32)
