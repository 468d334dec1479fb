"""Text-to-speech interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Voice:
    id: str  # engine-level voice id, e.g. "hibari", "piper-joe", "espeak-es"
    name: str
    gender: str  # "female" | "male"
    languages: tuple[str, ...]
    engine: str


@dataclass
class SpeechChunk:
    """One synthesised piece (typically a sentence) of mono float32 audio."""

    audio: np.ndarray
    sample_rate: int
    text: str


class SpeechEngine(Protocol):
    """One synthesiser (hibari, Piper, espeak); ``voices.Speaker`` picks and streams them."""

    first_chunk_chars: int  # a longer first sentence is cut at a clause, for early first audio

    @property
    def sample_rate(self) -> int: ...

    def load(self) -> object: ...

    def speak(self, text: str, speed: float) -> np.ndarray:
        """Blocking; one piece of text to mono float32 audio at ``sample_rate``."""
        ...
