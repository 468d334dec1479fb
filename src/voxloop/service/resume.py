"""Conversations of Soca sessions, kept a while so a client that reconnects with the same
``session_id`` goes on where it left off (the Soca docs ask clients to reconnect with backoff).

Two stores share one interface (``save``, ``owner``, ``take``, all awaited): :class:`ResumeStore`
in this process, and ``cluster.redis_state.RedisResume`` in Redis when nodes share it, so a client
resumes on any node. :class:`SaveEachTurn` saves after every committed turn, not only when the
socket closes, so a node that dies (SIGKILL) leaves every committed turn resumable elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from voxloop.backends.llm.base import ChatMessage

log = logging.getLogger(__name__)


@dataclass
class Saved:
    owner: str  # digest of the token that created the session: another key cannot resume it
    messages: list[ChatMessage] = field(default_factory=list)
    seq: int = 0  # the client compares seq across reconnects, so it never goes backwards
    expires_at: float = 0.0

    def to_json(self) -> str:
        messages = [{"role": m.role, "content": m.content, "id": m.id} for m in self.messages if _plain(m)]
        return json.dumps({"owner": self.owner, "seq": self.seq, "messages": messages})

    @classmethod
    def from_json(cls, text: str | bytes) -> Saved:
        data = json.loads(text)
        messages = [ChatMessage(m["role"], m["content"], id=m["id"]) for m in data["messages"]]
        return cls(data["owner"], messages, int(data["seq"]))


def _plain(message: ChatMessage) -> bool:
    """Spoken turns and the system prompt; tool traffic and images are not carried across nodes."""
    return not message.tool_calls and message.tool_call_id is None and message.role != "tool"


def owner_of(token: str | None) -> str:
    return hashlib.sha256((token or "").encode()).hexdigest()


class Resumable(Protocol):
    async def save(self, session_id: str, saved: Saved) -> None: ...
    async def owner(self, session_id: str) -> str | None: ...
    async def take(self, session_id: str, owner: str) -> Saved | None: ...


class ResumeStore:
    """Bounded, expiring, in-process: at most ``capacity`` sessions, each for ``grace_s``."""

    def __init__(self, grace_s: float, capacity: int) -> None:
        self.grace_s, self.capacity = grace_s, capacity
        self._saved: OrderedDict[str, Saved] = OrderedDict()

    async def save(self, session_id: str, saved: Saved, now: float | None = None) -> None:
        if self.grace_s <= 0 or self.capacity <= 0:
            return
        saved.expires_at = (now if now is not None else time.monotonic()) + self.grace_s
        self._saved.pop(session_id, None)
        self._saved[session_id] = saved
        self._expire(now)
        while len(self._saved) > self.capacity:
            self._saved.popitem(last=False)  # the oldest goes first

    async def owner(self, session_id: str, now: float | None = None) -> str | None:
        self._expire(now)
        saved = self._saved.get(session_id)
        return saved.owner if saved else None

    async def take(self, session_id: str, owner: str, now: float | None = None) -> Saved | None:
        """The saved conversation, removed from the store; None if unknown, expired or not yours."""
        self._expire(now)
        saved = self._saved.get(session_id)
        if saved is None or saved.owner != owner:
            return None
        del self._saved[session_id]
        return saved

    def __len__(self) -> int:
        return len(self._saved)

    def _expire(self, now: float | None) -> None:
        now = now if now is not None else time.monotonic()
        while self._saved:
            session_id, oldest = next(iter(self._saved.items()))
            if oldest.expires_at > now:
                return
            del self._saved[session_id]


class SaveEachTurn:
    """A history listener: after each change to the conversation, saves ``snapshot()`` (one save
    in flight at a time; the newest snapshot wins). A failed save is logged: the conversation
    goes on, only a resume after a crash would miss that turn."""

    def __init__(self, store: Resumable, session_id: str, snapshot: Callable[[], Saved]) -> None:
        self.store, self.session_id, self.snapshot = store, session_id, snapshot
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def inserted(self, messages: list[ChatMessage]) -> None:
        self._schedule()

    def truncated(self, message: ChatMessage) -> None:
        self._schedule()

    def deleted(self, message: ChatMessage) -> None:
        self._schedule()

    def _schedule(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._save())

    async def _save(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.store.save(self.session_id, self.snapshot())
            except Exception as exc:
                log.warning("saving session %s for resuming failed: %s", self.session_id, exc)

    async def flush(self) -> None:
        """Waits for the save in flight (the session closes and saves once more after it)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
