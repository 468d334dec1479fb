"""A handle on one reply, from before its first event to its end (LiveKit's SpeechHandle is the model).

Every reply (a microphone turn, a typed turn, a manual reply to the history) gets its handle when
it is created, before any of its events leaves the session, and every event of the reply carries
the handle's ``id``. Protocols ask the handle what they would otherwise rebuild from the event
stream: whether the reply is done or was cut, what the user heard, and keep their own wire state
for the reply in ``tag``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from voxloop.engine.response import Response

Source = Literal["microphone", "text", "manual"]  # manual: a reply to the history as it stands


class ReplyHandle:
    def __init__(
        self, response: Response, source: Source, cut: Callable[[ReplyHandle, str], Awaitable[None]]
    ) -> None:
        self.response = response
        self.source = source
        self.tag: Any = None  # the protocol's own state for this reply (its wire ids)
        self.released = False  # its events go out (a speculative reply is held until the user is done)
        self.interrupted = False
        self.reason = ""  # why it was cut: "barge_in", "client", "new_input", "discarded"
        self.text = ""  # once done: what the user heard
        self._done = asyncio.Event()
        self._cut = cut

    @property
    def id(self) -> int:
        return self.response.generation

    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        await self._done.wait()

    @property
    def heard(self) -> str:
        """The reply's words the user has heard so far (all of them once it is done)."""
        return self.text if self.done() else self.response.playout.heard_text()

    async def interrupt(self, reason: str = "client") -> None:
        """Cuts the reply (the history keeps what was heard); nothing happens once it is done."""
        if not self.done():
            await self._cut(self, reason)

    def finish(self, text: str, interrupted: bool, reason: str = "") -> None:
        if self.done():
            return
        self.text, self.interrupted, self.reason = text, interrupted, reason
        self._done.set()

    def __repr__(self) -> str:
        state = ("cut: " + self.reason if self.interrupted else "done") if self.done() else "live"
        return f"ReplyHandle({self.id}, {self.source}, {state})"
