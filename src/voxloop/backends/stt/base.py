"""Speech-to-text interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    engine: str = ""
    confidence: float = 1.0  # 0..1: how sure the model is of the words (1.0 when it cannot tell)


class SpeechToText(Protocol):
    sample_rate: int  # what transcribe() expects

    def transcribe(
        self, audio: np.ndarray, language: str | None = None, *, keyterms: Sequence[str] | None = None
    ) -> Transcript:
        """Blocking; callers run it off the event loop. ``language`` None means detect;
        ``keyterms`` are words to favour (names, jargon)."""
        ...
