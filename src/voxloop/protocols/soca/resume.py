"""Conversations of closed Soca sessions, kept a while so a client that reconnects with the same
``session_id`` goes on where it left off (the Soca docs ask clients to reconnect with backoff)."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from voxloop.backends.llm.base import ChatMessage


@dataclass
class Saved:
    owner: str  # digest of the token that created the session: another key cannot resume it
    messages: list[ChatMessage] = field(default_factory=list)
    seq: int = 0  # the client compares seq across reconnects, so it never goes backwards
    expires_at: float = 0.0


def owner_of(token: str | None) -> str:
    return hashlib.sha256((token or "").encode()).hexdigest()


class ResumeStore:
    """Bounded, expiring, in-process: at most ``capacity`` sessions, each for ``grace_s``."""

    def __init__(self, grace_s: float, capacity: int) -> None:
        self.grace_s, self.capacity = grace_s, capacity
        self._saved: OrderedDict[str, Saved] = OrderedDict()

    def save(self, session_id: str, saved: Saved, now: float | None = None) -> None:
        if self.grace_s <= 0 or self.capacity <= 0:
            return
        saved.expires_at = (now if now is not None else time.monotonic()) + self.grace_s
        self._saved.pop(session_id, None)
        self._saved[session_id] = saved
        self._expire(now)
        while len(self._saved) > self.capacity:
            self._saved.popitem(last=False)  # the oldest goes first

    def owner(self, session_id: str, now: float | None = None) -> str | None:
        self._expire(now)
        saved = self._saved.get(session_id)
        return saved.owner if saved else None

    def take(self, session_id: str, owner: str, now: float | None = None) -> Saved | None:
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
