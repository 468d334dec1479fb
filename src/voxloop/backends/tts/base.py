"""Text-to-speech interface."""

from __future__ import annotations

from collections.abc import Iterator
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


class TextToSpeech(Protocol):
    def voices(self) -> list[Voice]: ...

    def synthesize(self, text: str, voice: Voice, language: str, speed: float = 1.0) -> Iterator[SpeechChunk]:
        """Blocking generator, sentence by sentence, so the first audio is ready early."""
        ...
