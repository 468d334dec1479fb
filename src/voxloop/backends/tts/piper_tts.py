"""Piper VITS voices run directly on onnxruntime, with espeak-ng IPA phonemes (no piper-tts package).

Reproduces Piper's input encoding: the text is phonemised clause by clause, each clause's end
punctuation kept as a phoneme (it shapes the intonation), then Unicode-decomposed and mapped to
ids as ``^ _ p1 _ p2 _ ... _ $`` with the voice's ``phoneme_id_map``.

The model runs in three parts (``piper_split``): text to prior frames, then the flow and the
decoder over spans of frames, so ``stream`` yields a sentence's first ~0.1 s of audio before the
rest is made.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from voxloop.backends.tts.espeak_tts import library
from voxloop.backends.tts.piper_split import LATENTS, MASK, PRIOR, split_piper
from voxloop.models import piper_joe_files

# Clause ends as Piper writes them after the clause's phonemes.
_TERMINATORS = {",": ", ", ";": "; ", ":": ": ", ".": ". ", "?": "? ", "!": "! ", "…": ". "}
_CLAUSE_END = re.compile(r"(?<=[,;:.?!…])\s+")


# Streaming: the decoder sees this many latent frames (11.6 ms each) on each side of the span it
# decodes, and the flow this many more prior frames on each side of those, so the spans join as the
# one-shot audio. The decoder's receptive field is 10 frames (8 give 55 dB SNR, 10 float rounding);
# the flow's reaches further but fades: joined against one-shot audio (bench_piper_pieces' 16
# sentences x 3 speeds x 3 draws) SNR median/min 113/100 dB with 20 frames (16: 106/82, 24: 115/98).
# The first span (93 ms of audio) is short for an early start, and later ones double: each is made
# well before the audio before it has played. (A 46 ms first span made no clear difference over the
# socket, M1 p50 34.7 against 35.3 ms, and the stream's resampler, soxr, lets out only 38 ms of it
# at once: less than a busy machine may take to make the next span.)
DECODER_CONTEXT = 10
FLOW_CONTEXT = 20
FIRST_FRAMES = 8


@dataclass(frozen=True)
class Latents:
    prior: np.ndarray  # (1, channels, count): sampled frames, which the flow makes the decoder's input
    word_starts: list[int]  # the frame at which each word of the text starts

    @property
    def count(self) -> int:
        return self.prior.shape[2]


class Decoded(NamedTuple):
    """One span of a streamed sentence: its audio, the words that start in it, and whether it ends it."""

    audio: np.ndarray
    text: str
    last: bool


class PiperEngine:
    """One Piper voice (a ``.onnx`` model with its ``.onnx.json``), by default US male en_US-joe-medium."""

    # A first piece streams span by span, but its text part runs over all of it (~9 ms plus ~0.4 ms
    # per character), so a longer first sentence is still cut, at a clause within it, else at a
    # phrase boundary: over the socket (bench_tts, loaded machine) M1's first byte p50 was 50-56 ms
    # with 16 characters, 61 ms with 40; bench_piper_pieces: uncut 65 ms.
    first_chunk_chars = 16
    streamed = True  # the Speaker streams a first piece's spans (bench_piper_pieces compares both)
    # The level a streamed piece gets: voices.level gives joe's whole sentences x1.1-x2.1 (median
    # x1.55 over bench_piper_pieces' 16), a little less keeps most spans' peaks under its limit.
    stream_gain = 1.4

    def __init__(
        self, cache_dir: Path, threads: int = 1, model: Path | None = None, config: Path | None = None
    ) -> None:
        if model is None or config is None:
            model, config = piper_joe_files()
        self.model_path = model
        self._cache_dir = cache_dir
        settings = json.loads(config.read_text(encoding="utf-8"))
        self.sample_rate: int = settings["audio"]["sample_rate"]
        self.espeak_voice: str = settings["espeak"]["voice"]
        self._ids: dict[str, list[int]] = settings["phoneme_id_map"]
        inference = settings["inference"]
        self._noise_scale = float(inference["noise_scale"])
        self._length_scale = float(inference["length_scale"])
        self._noise_w = float(inference["noise_w"])
        self._threads = threads
        self._sessions: tuple[ort.InferenceSession, ...] | None = None
        self._load_lock = threading.Lock()

    def load(self) -> tuple[ort.InferenceSession, ...]:
        """The text part's, the flow's and the decoder's sessions, created (and the model split)
        on first use."""
        with self._load_lock:
            if self._sessions is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = self._threads
                options.log_severity_level = 3
                split = split_piper(self.model_path, self._cache_dir)
                self._sessions = tuple(
                    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for path in (split.text, split.flow, split.decoder)
                )
            return self._sessions

    def phonemes(self, text: str) -> str:
        espeak = library()
        parts = []
        for clause in _CLAUSE_END.split(text.strip()):
            spoken = espeak.phonemize(clause, self.espeak_voice)
            if spoken:
                parts.append(spoken + _TERMINATORS.get(clause[-1], " "))
        return "".join(parts).strip()

    def phoneme_ids(self, phonemes: str) -> list[int]:
        pad = self._ids["_"]
        ids = [*self._ids["^"], *pad]
        for symbol in unicodedata.normalize("NFD", phonemes):
            if symbol in self._ids:  # Piper skips symbols the voice was not trained on, too
                ids += [*self._ids[symbol], *pad]
        return [*ids, *self._ids["$"]]

    def latents(self, text: str, speed: float, noise: bool = True) -> Latents | None:
        """The text's prior frames (None if it has nothing to say); ``noise`` False makes them
        deterministic (Piper samples them with the voice's noise scales)."""
        ids = self.phoneme_ids(self.phonemes(text))
        if len(ids) <= 3:
            return None
        noise_scale, noise_w = (self._noise_scale, self._noise_w) if noise else (0.0, 0.0)
        feed = {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": np.array([noise_scale, self._length_scale / speed, noise_w], np.float32),
        }
        prior, durations = self.load()[0].run(None, feed)
        return Latents(prior, self._word_starts(text, ids, durations.reshape(-1), prior.shape[2]))

    def _word_starts(self, text: str, ids: list[int], durations: np.ndarray, count: int) -> list[int]:
        """Where each word of ``text`` starts: after each space among the phonemes where espeak
        spoke as many words as the text has, else in proportion to the words' characters."""
        words = text.split()
        ends = np.cumsum(durations).astype(int)
        space = self._ids.get(" ", [])
        gaps = [int(ends[i]) for i, symbol in enumerate(ids) if symbol in space]
        if len(gaps) == len(words) - 1:
            return [0, *gaps]
        chars = np.cumsum([0, *(len(word) + 1 for word in words)])
        return [int(count * before / chars[-1]) for before in chars[:-1]]

    def decode(self, latents: Latents, start: int = 0, end: int | None = None) -> np.ndarray:
        """Audio of frames ``start:end``, made with DECODER_CONTEXT and FLOW_CONTEXT around them."""
        _, flow, decoder = self.load()
        count = latents.count
        end = count if end is None else end
        low, high = max(0, start - DECODER_CONTEXT), min(count, end + DECODER_CONTEXT)
        first, last = max(0, low - FLOW_CONTEXT), min(count, high + FLOW_CONTEXT)
        mask = np.ones((1, 1, last - first), np.float32)
        frames = flow.run(None, {PRIOR: latents.prior[:, :, first:last], MASK: mask})[0]
        audio = decoder.run(None, {LATENTS: frames[:, :, low - first : high - first]})[0].reshape(-1)
        hop = len(audio) // (high - low)
        return np.asarray(audio[(start - low) * hop : (end - low) * hop], np.float32)

    def speak(self, text: str, speed: float) -> np.ndarray:
        """Mono float32 audio at ``sample_rate``; ``speed`` divides the voice's length scale."""
        latents = self.latents(text, speed)
        return np.zeros(0, np.float32) if latents is None else self.decode(latents)

    def stream(self, text: str, speed: float) -> Iterator[Decoded]:
        """``speak``'s audio span by span (see ``spans``)."""
        latents = self.latents(text, speed)
        if latents is not None:
            yield from self.spans(latents, text)

    def spans(self, latents: Latents, text: str) -> Iterator[Decoded]:
        """The latents decoded FIRST_FRAMES first, then in spans that double, each with the words of
        ``text`` that start in it (the last span takes a remainder shorter than twice its size)."""
        words = list(zip(text.split(), latents.word_starts, strict=True))
        start, size = 0, FIRST_FRAMES
        while start < latents.count:
            end = latents.count if start and latents.count - start < 2 * size else start + size
            end = min(end, latents.count)
            spoken = " ".join(word for word, at in words if start <= at < end)
            yield Decoded(self.decode(latents, start, end), spoken, end == latents.count)
            start, size = end, size * 2
