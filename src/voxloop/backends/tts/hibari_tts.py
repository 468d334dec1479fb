"""Hibari: a 7.9 MB Kokoro-distilled US English female voice (Apache-2.0), 24 kHz, on onnxruntime.

Only the voice bundled in the package ("heart") is used: hibari downloads its other voices from a
model hub, which a self-hosted, offline server must never do.
"""

from __future__ import annotations

import threading

import numpy as np
from hibari import SAMPLE_RATE, Hibari

BUNDLED_VOICE = "heart"


class HibariEngine:
    """The bundled Hibari voice; thread-safe, loaded on first use."""

    sample_rate = SAMPLE_RATE
    # ~5 ms plus 0.4 ms per character: a whole ordinary sentence is ready within ~50 ms, and
    # Hibari pads every chunk with ~0.3 s of silence, so cutting short sentences would only add pauses.
    first_chunk_chars = 100

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._tts: Hibari | None = None
        self._load_lock = threading.Lock()
        self._g2p_lock = threading.Lock()  # the G2P (tagger, lexicon caches) is not made for threads

    def load(self) -> Hibari:
        """The model and its G2P, created on first use."""
        with self._load_lock:
            if self._tts is None:
                tts = Hibari(voice=BUNDLED_VOICE, threads=self._threads)
                tts.g2p  # noqa: B018 -- builds the G2P now rather than inside the first request
                self._tts = tts
            return self._tts

    def speak(self, text: str, speed: float) -> np.ndarray:
        """Mono float32 audio at 24 kHz (quiet: callers normalise the level)."""
        tts = self.load()
        with self._g2p_lock:
            phonemes = tts.phonemize(text)
        rng = np.random.default_rng()  # one per call: numpy generators are not thread-safe
        parts = [tts.from_ids(tts.ids(chunk), speed, rng) for chunk in phonemes]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
