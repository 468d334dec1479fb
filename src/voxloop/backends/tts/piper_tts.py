"""Piper VITS voices run directly on onnxruntime, with espeak-ng IPA phonemes (no piper-tts package).

Reproduces Piper's input encoding: the text is phonemised clause by clause, each clause's end
punctuation kept as a phoneme (it shapes the intonation), then Unicode-decomposed and mapped to
ids as ``^ _ p1 _ p2 _ ... _ $`` with the voice's ``phoneme_id_map``.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voxloop.backends.tts.espeak_tts import library
from voxloop.models import piper_joe_files

# Clause ends as Piper writes them after the clause's phonemes.
_TERMINATORS = {",": ", ", ";": "; ", ":": ": ", ".": ". ", "?": "? ", "!": "! ", "…": ". "}
_CLAUSE_END = re.compile(r"(?<=[,;:.?!…])\s+")


class PiperEngine:
    """One Piper voice (a ``.onnx`` model with its ``.onnx.json``), by default US male en_US-joe-medium."""

    # Roughly 25 ms plus 3 ms per character on one core: a first sentence past this length is cut
    # at a clause within it, else at a phrase boundary within it, so the first audio comes early
    # (bench/bench_piper_pieces.py measures what the cut costs in intelligibility).
    first_chunk_chars = 16

    def __init__(self, threads: int = 1, model: Path | None = None, config: Path | None = None) -> None:
        if model is None or config is None:
            model, config = piper_joe_files()
        self.model_path = model
        settings = json.loads(config.read_text(encoding="utf-8"))
        self.sample_rate: int = settings["audio"]["sample_rate"]
        self.espeak_voice: str = settings["espeak"]["voice"]
        self._ids: dict[str, list[int]] = settings["phoneme_id_map"]
        inference = settings["inference"]
        self._noise_scale = float(inference["noise_scale"])
        self._length_scale = float(inference["length_scale"])
        self._noise_w = float(inference["noise_w"])
        self._threads = threads
        self._session: ort.InferenceSession | None = None
        self._load_lock = threading.Lock()

    def load(self) -> ort.InferenceSession:
        """The model's session, created on first use."""
        with self._load_lock:
            if self._session is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = self._threads
                options.log_severity_level = 3
                self._session = ort.InferenceSession(
                    str(self.model_path), options, providers=["CPUExecutionProvider"]
                )
            return self._session

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

    def speak(self, text: str, speed: float) -> np.ndarray:
        """Mono float32 audio at ``sample_rate``; ``speed`` divides the voice's length scale."""
        session = self.load()
        ids = self.phoneme_ids(self.phonemes(text))
        if len(ids) <= 3:
            return np.zeros(0, np.float32)
        scales = np.array([self._noise_scale, self._length_scale / speed, self._noise_w], np.float32)
        feed = {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": scales,
        }
        audio = session.run(None, feed)[0]
        return np.asarray(audio, np.float32).reshape(-1)
