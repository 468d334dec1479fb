"""Per-key limits and the life of a session.

Every session holds a :class:`Lease` from the :class:`Limiter`. The lease counts toward its key's
open sessions, meters the client's messages and audio (token buckets shared by all sessions of the
key), and ends, via ``lease.ended``, when the key is revoked, the session idles or runs too long,
or the server drains. Going over a limit costs the offending session (its message is refused with
``LimitExceeded``), never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from voxloop.service.keys import AsyncKeys, KeyInfo

if TYPE_CHECKING:
    from voxloop.service.admission import Admission

log = logging.getLogger(__name__)

MESSAGE_BURST_S = 2.0  # a key may send two seconds' worth of messages at once
WATCH_EVERY_S = 1.0
REPORT_EVERY_S = 1.0
REVOKED_POLL_S = 2.0  # the CLI revokes by writing the store; the server notices within this
# (with Redis, at once: the CLI also broadcasts the revocation)
TAKEOVER_POLL_S = 0.02  # with Redis: how often a new connection looks whether the older has left


class LimitExceeded(Exception):
    """Over a limit: ``message`` is for the client; ``status`` is the HTTP status to answer and
    ``close_code`` the WebSocket one (1013 "try again later" for rate limits and capacity, 1001
    while the server goes away)."""

    def __init__(self, message: str, status: int = 429, close_code: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status = message, status
        self.close_code = close_code or (1013 if status == 429 else 1001)


class StoreUnavailable(LimitExceeded):
    """A configured Redis or PostgreSQL does not answer: the session is refused or ended (503)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"shared state unavailable: {what}", status=503)


class Bucket(Protocol):
    def take(self, amount: float) -> bool: ...
    async def ready(self) -> None: ...


class TokenBucket:
    def __init__(self, rate_per_s: float, capacity: float) -> None:
        self.rate, self.capacity = rate_per_s, capacity
        self.tokens, self.updated = capacity, time.monotonic()

    def take(self, amount: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True

    async def ready(self) -> None:
        pass


@dataclass
class KeyUsage:
    info: KeyInfo
    leases: set[Lease] = field(default_factory=set)  # this node's
    bucket: Callable[[str, float, float], Bucket] = lambda _name, rate, capacity: TokenBucket(rate, capacity)
    messages: Bucket | None = None
    audio: Bucket | None = None

    def __post_init__(self) -> None:
        limits, key_id = self.info.limits, self.info.id
        if limits.messages_per_s > 0:
            burst = max(1.0, limits.messages_per_s * MESSAGE_BURST_S)
            self.messages = self.bucket(f"{key_id}:messages", limits.messages_per_s, burst)
        if limits.audio_s_per_min > 0:
            self.audio = self.bucket(f"{key_id}:audio", limits.audio_s_per_min / 60, limits.audio_s_per_min)

    async def ready(self) -> None:
        """Waits for budgets held elsewhere (Redis) to be at hand, so the first message is fair."""
        for bucket in (self.messages, self.audio):
            if bucket is not None:
                await bucket.ready()

    def message(self) -> None:
        if self.messages is not None and not self.messages.take(1):
            rate = self.info.limits.messages_per_s
            raise LimitExceeded(f"rate limit: more than {rate:g} messages per second")

    def spend_audio(self, seconds: float) -> None:
        if self.audio is not None and not self.audio.take(seconds):
            raise LimitExceeded(
                f"rate limit: more than {self.info.limits.audio_s_per_min:g} seconds of audio per minute"
            )


class Lease:
    """One open session. Protocols call ``message()`` per client message (the shared WebSocket
    route does it for them), ``audio(seconds)`` per chunk of client audio, and end when
    ``ended`` is set: tell the client ``end_reason`` and close with ``close_code``."""

    def __init__(self, limiter: Limiter, usage: KeyUsage) -> None:
        self.limiter, self.usage, self.key = limiter, usage, usage.info
        self.session_id = uuid.uuid4().hex
        self.opened_at = self.last_active = time.monotonic()
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.close_code = 1000
        self.closed = False
        self._reported_at = 0.0
        self.claims: list[Claim] = []  # session ids this session holds, released when it closes

    def report_due(self) -> bool:
        """True at most once a second: a flooding client gets one limit error a second, not one
        per dropped message."""
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY_S:
            return False
        self._reported_at = now
        return True

    def message(self) -> None:
        """One client message; raises LimitExceeded over the key's rate."""
        self.last_active = time.monotonic()
        self.usage.message()

    def audio(self, seconds: float) -> None:
        """Client audio; raises LimitExceeded over the key's audio seconds per minute."""
        self.last_active = time.monotonic()
        self.usage.spend_audio(seconds)

    def end(self, reason: str, code: int = 1008) -> None:
        """Asks the session to end (first reason wins)."""
        if not self.ended.is_set():
            self.end_reason, self.close_code = reason, code
            self.ended.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.usage.leases.discard(self)
            self.limiter.book.close(self.key.id, self.session_id)
            for claim in self.claims:
                claim.release()
            self.limiter.closed.set()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Claim:
    """One holder of a live session id (see :meth:`Limiter.claim`); released once."""

    def __init__(self, book: SessionBook, session_id: str) -> None:
        self.book, self.session_id, self.released = book, session_id, False
        self.holder = uuid.uuid4().hex

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.book.unclaim(self.session_id, self.holder)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SessionBook(Protocol):
    """Who holds what: each key's open sessions and the live session ids. :class:`LocalBook` keeps
    it in this process; ``cluster.redis_state.RedisBook`` in Redis, shared by every node. ``open``
    and ``claim`` check and take in one atomic step; ``close`` and ``unclaim`` never wait."""

    async def open(self, key_id: str, session_id: str, limit: int) -> bool: ...
    def close(self, key_id: str, session_id: str) -> None: ...
    async def claim(self, session_id: str, key_id: str, holder: str) -> bool: ...
    def unclaim(self, session_id: str, holder: str) -> None: ...
    async def take_over(self, session_id: str, holder: str, wait_s: float) -> None: ...
    def bucket(self, name: str, rate_per_s: float, capacity: float) -> Bucket: ...
    async def start(self, limiter: Limiter) -> None: ...
    async def stop(self) -> None: ...


class LocalBook:
    """The single-node book: plain dicts, checked and changed with no await in between."""

    def __init__(self) -> None:
        self.sessions: dict[str, set[str]] = {}  # key id -> its open session ids
        self.live_ids: dict[str, tuple[str, set[str]]] = {}  # session id -> (owning key, holders)
        self.limiter: Limiter | None = None
        self.unclaimed = asyncio.Event()  # pulsed when a holder lets go (a takeover waits on it)

    async def open(self, key_id: str, session_id: str, limit: int) -> bool:
        open_ids = self.sessions.setdefault(key_id, set())
        if limit and len(open_ids) >= limit:
            return False
        open_ids.add(session_id)
        return True

    def close(self, key_id: str, session_id: str) -> None:
        open_ids = self.sessions.get(key_id, set())
        open_ids.discard(session_id)
        if not open_ids:
            self.sessions.pop(key_id, None)

    async def claim(self, session_id: str, key_id: str, holder: str) -> bool:
        owner, holders = self.live_ids.get(session_id, (key_id, set()))
        if owner != key_id:
            return False
        self.live_ids[session_id] = (key_id, holders | {holder})
        return True

    def unclaim(self, session_id: str, holder: str) -> None:
        owner, holders = self.live_ids.get(session_id, ("", set()))
        if holders - {holder}:
            self.live_ids[session_id] = (owner, holders - {holder})
        else:
            self.live_ids.pop(session_id, None)
        self.unclaimed.set()

    async def take_over(self, session_id: str, holder: str, wait_s: float) -> None:
        if self.limiter is None or not self.limiter.on_taken_over(session_id, holder):
            return
        async with asyncio.timeout(wait_s):  # TimeoutError: the older holder did not leave in time
            while self.live_ids.get(session_id, ("", set()))[1] - {holder}:
                self.unclaimed.clear()
                await self.unclaimed.wait()

    def bucket(self, name: str, rate_per_s: float, capacity: float) -> Bucket:
        return TokenBucket(rate_per_s, capacity)

    async def start(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def stop(self) -> None:
        pass


class Limiter:
    def __init__(
        self,
        store: AsyncKeys | None = None,
        max_session_s: float = 0.0,
        idle_timeout_s: float = 0.0,
        book: SessionBook | None = None,
    ) -> None:
        self.store = store
        self.max_session_s, self.idle_timeout_s = max_session_s, idle_timeout_s
        self.book: SessionBook = book or LocalBook()
        self.usage: dict[str, KeyUsage] = {}  # bounded: one entry per valid key
        self.draining = False
        self.admission: Admission | None = None  # the machine's capacity, over all keys
        self.closed = asyncio.Event()  # pulsed when a lease closes (drain waits on it)
        self._watcher: asyncio.Task[None] | None = None
        self.on_revoked: Callable[[str], object] = lambda _key_id: None  # (the key check's cache)
        # A session id connected again (Soca): ends this node's older holders of it, and returns
        # which holders it told to leave. Set by the protocol that keeps sessions by id.
        self.on_taken_over: Callable[[str, str], list[str]] = lambda _session_id, _holder: []

    def _usage(self, key: KeyInfo) -> KeyUsage:
        usage = self.usage.get(key.id)
        if usage is None or usage.info != key:  # new limits apply from the next session
            usage = KeyUsage(key, usage.leases if usage else set(), self.book.bucket)
            self.usage[key.id] = usage
        return usage

    async def open_session(self, key: KeyInfo) -> Lease:
        """A lease for a new session of ``key``; raises LimitExceeded (503 while draining or when
        the shared state does not answer)."""
        if self.draining:
            raise LimitExceeded("server shutting down", status=503)
        if self.admission is not None:
            self.admission.check(len(self.leases()))
        usage = self._usage(key)
        lease = Lease(self, usage)
        limit = key.limits.max_sessions
        if not await self.book.open(key.id, lease.session_id, limit):
            raise LimitExceeded(f"rate limit: this key already has {limit} open sessions")
        usage.leases.add(lease)
        try:
            claim = await self.claim(lease.session_id, key.id)
            assert claim is not None  # 128 random bits: never live already
            lease.claims.append(claim)
            await usage.ready()
        except BaseException:
            lease.close()
            raise
        if self.draining:  # it began while we waited on the shared state
            lease.close()
            raise LimitExceeded("server shutting down", status=503)
        return lease

    async def take_over(self, claim: Claim, wait_s: float) -> None:
        """Tells the other holders of ``claim``'s session id, on any node, to end, and waits (at
        most ``wait_s``) until those still alive have left: their last words are saved by then."""
        try:
            await self.book.take_over(claim.session_id, claim.holder, wait_s)
        except TimeoutError:
            log.warning("session %s: its older connection did not end within %s s", claim.session_id, wait_s)

    async def claim(self, session_id: str, key_id: str) -> Claim | None:
        """Takes ``session_id`` for ``key_id`` while it is live, or None when another key holds it.
        The same key may hold an id more than once (a Soca client reconnecting takes over)."""
        claim = Claim(self.book, session_id)
        return claim if await self.book.claim(session_id, key_id, claim.holder) else None

    async def request(self, key: KeyInfo) -> None:
        """One HTTP request of ``key`` (counts as a message); raises LimitExceeded."""
        usage = self._usage(key)
        await usage.ready()
        usage.message()

    def spend_audio(self, key: KeyInfo, seconds: float) -> None:
        """Audio of ``key`` outside a session (an HTTP clip); raises LimitExceeded over its budget."""
        self._usage(key).spend_audio(seconds)

    def leases(self) -> list[Lease]:
        return [lease for usage in self.usage.values() for lease in usage.leases]

    def end_key(self, key_id: str, reason: str = "API key revoked") -> int:
        usage = self.usage.get(key_id)
        leases = list(usage.leases) if usage else []
        for lease in leases:
            lease.end(reason, 1008)
        return len(leases)

    async def drain(self, timeout_s: float, reason: str = "server shutting down") -> int:
        """Refuses new sessions, asks every open one to end (1001), waits up to ``timeout_s``."""
        self.draining = True
        open_leases = self.leases()
        for lease in open_leases:
            lease.end(reason, 1001)
        deadline = time.monotonic() + timeout_s
        while self.leases() and time.monotonic() < deadline:
            self.closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), max(0.01, deadline - time.monotonic()))
        left = len(self.leases())
        log.info("drained %d sessions (%d still open)", len(open_leases) - left, left)
        return left

    # ---- the watcher: revocations, idle and overlong sessions --------------------------------

    async def start(self) -> None:
        await self.book.start(self)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        await self.book.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch(self) -> None:
        polled = 0.0
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            now = time.monotonic()
            for lease in self.leases():
                if self.max_session_s and now - lease.opened_at > self.max_session_s:
                    lease.end(f"session time limit ({self.max_session_s:g} s) reached", 1008)
                elif self.idle_timeout_s and now - lease.last_active > self.idle_timeout_s:
                    lease.end(f"idle for more than {self.idle_timeout_s:g} s", 1000)
            if self.store is not None and now - polled >= REVOKED_POLL_S:
                polled = now
                await self._end_revoked()

    async def _end_revoked(self) -> None:
        open_ids = {key_id for key_id, usage in self.usage.items() if usage.leases and usage.info.stored}
        if not open_ids or self.store is None:
            return
        try:
            revoked = await self.store.revoked_ids()
        except Exception:  # a locked or missing store must not stop the watcher
            log.exception("reading revoked keys failed")
            return
        for key_id in open_ids & revoked:
            log.info("key %s revoked: ending its %d sessions", key_id, self.end_key(key_id))
