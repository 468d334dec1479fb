"""Speech waiting to go out on a simulated real-time microphone, shared by the test clients."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class SpeechQueue:
    """Clips queued by ``say`` (any thread) and taken a frame at a time by the microphone thread;
    ``say`` returns once the clip's last sample has left in a frame."""

    def __init__(self) -> None:
        self._items: deque[np.ndarray | threading.Event] = deque()
        self._lock = threading.Lock()
        self._pending = np.zeros(0, dtype=np.float32)  # the microphone thread's alone

    def say(self, audio: np.ndarray) -> float:
        """Queues speech; returns when its last sample has been sent (monotonic)."""
        done = threading.Event()
        with self._lock:
            self._items.append(audio.astype(np.float32))
            self._items.append(done)
        done.wait()
        return time.monotonic()

    def next_frame(self, size: int) -> np.ndarray:
        """The next ``size`` samples of queued speech, silence where there is none."""
        with self._lock:
            while self._items and len(self._pending) < size:
                item = self._items.popleft()
                if isinstance(item, threading.Event):
                    if len(self._pending) == 0:
                        item.set()  # everything before it has gone out
                    else:
                        self._items.appendleft(item)
                        break
                else:
                    self._pending = np.concatenate([self._pending, item])
        voice, self._pending = self._pending[:size], self._pending[size:]
        frame = np.zeros(size, dtype=np.float32)
        frame[: len(voice)] = voice
        return frame
