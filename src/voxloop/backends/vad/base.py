"""Voice activity detection interface."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class VadStream(Protocol):
    """Per-session detector state: feed consecutive frames, get speech probabilities."""

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability for one frame of ``frame_samples`` float32 samples."""
        ...

    def reset(self) -> None: ...

    def close(self) -> None:
        """Releases the detector; the stream is unusable afterwards."""
        ...


class VoiceActivityDetector(Protocol):
    sample_rate: int
    frame_samples: int

    def new_stream(self) -> VadStream: ...
