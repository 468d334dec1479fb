"""Reply events timed for a client that plays each ``audio_chunk`` the moment it arrives.

SelamGPT's example plays every chunk with ``new Audio(...).play()``: there is no client queue, so
a chunk sent early plays over the one before it. The engine hands out whole spoken pieces well
ahead of time (to give a queueing client room to decode); here each one waits until the piece
before it is about to end on the client, and what an interruption cancels is never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# A chunk leaves this long after the previous one ends by the server's clock. The client started
# that one late by its decode time, so sending earlier overlaps (Chromium: 57 ms with a 40 ms
# lead); the gap this leaves is the margin less the decode time, far under the 150 ms aimed at.
PLAY_MARGIN_S = 0.05

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class _Item:
    events: list[tuple[str, dict[str, Any]]]  # sent together: a piece's text and its audio
    generation: int
    seconds: float  # audio length; 0 for events without audio


class PlayOnArrival:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self.plays_until = 0.0  # monotonic time at which the client ends the audio sent so far
        self._task = asyncio.create_task(self._run())

    def put(self, events: list[tuple[str, dict[str, Any]]], generation: int, seconds: float = 0.0) -> None:
        self._items.append(_Item(events, generation, seconds))
        self._ready.set()

    def drop(self, generation: int) -> None:
        """Forgets the unsent audio (and its text) of an interrupted reply."""
        self._items = deque(item for item in self._items if item.generation != generation or not item.seconds)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                item = self._items[0]
                if item.seconds and (delay := self.plays_until + PLAY_MARGIN_S - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                    if not self._items or self._items[0] is not item:
                        continue  # dropped while waiting
                self._items.popleft()
                if item.seconds:
                    self.plays_until = max(self.plays_until, time.monotonic()) + item.seconds
                for event, payload in item.events:
                    await self._emit(event, payload)
