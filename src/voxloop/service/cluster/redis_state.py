"""What nodes share in Redis: each key's open sessions, live session ids, message and audio
budgets, revocations, takeovers of a session id and Soca's resumable conversations.

Holdings (a session's place among its key's, a holder of a session id) are members of sorted sets
scored by their expiry, taken by Lua scripts that check and add in one step on Redis' clock. The
node that holds them refreshes them every third of ``ttl_s``; a node that dies stops refreshing,
so its sessions free their keys' places within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from voxloop.service.limits import TAKEOVER_POLL_S, StoreUnavailable
from voxloop.service.resume import Saved

if TYPE_CHECKING:
    from voxloop.service.limits import Limiter

log = logging.getLogger(__name__)

PREFIX = "voxloop:"
REVOKED = PREFIX + "revoked"  # pub/sub channel: ids of revoked keys
TAKEOVER = PREFIX + "takeover"  # pub/sub channel: [session id, its new holder]: older holders end
ANSWER_S = 0.5  # an older holder that has not said "leaving" by then is on a node that is gone
LEAVING_MS = 10_000

_NOW_MS = (
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
)

# KEYS: holders (zset), owner (string); ARGV: member, limit (0: none), ttl ms, owner ('' : none)
ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
if ARGV[4] ~= '' and live > 0 then
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= ARGV[4] then return 0 end
end
local limit = tonumber(ARGV[2])
if limit > 0 and live >= limit and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3]) end
return 1
"""
)
# KEYS: holders, owner; ARGV: member, ttl ms. 1: still held (expiry moved on), 0: lost
REFRESH = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
"""
)
RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
return 1
"""
# KEYS: bucket (hash); ARGV: rate per s, capacity, wanted. Returns what was granted (a string).
TAKE_BUDGET = """
local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or capacity)
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
tokens = math.min(capacity, tokens + (now - at) * rate)
local granted = math.min(wanted, tokens)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - granted), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(granted)
"""
# KEYS: saved conversation; ARGV: owner. The JSON when it is the owner's (then deleted), else ''.
TAKE_SAVED = """
local saved = redis.call('GET', KEYS[1])
if not saved then return '' end
if cjson.decode(saved)['owner'] ~= ARGV[1] then return '' end
redis.call('DEL', KEYS[1])
return saved
"""


def sessions_of(key_id: str) -> str:
    return f"{PREFIX}sessions:{key_id}"


def holders_of(session_id: str) -> tuple[str, str]:
    return f"{PREFIX}id:{session_id}", f"{PREFIX}id-owner:{session_id}"


def leaving(holder: str) -> str:
    return f"{PREFIX}leaving:{holder}"


class RedisBook:
    """The :class:`~voxloop.service.limits.SessionBook` of a node among many."""

    def __init__(self, redis: Redis, where: str, ttl_s: float) -> None:
        self.redis, self.where, self.ttl_ms = redis, where, int(ttl_s * 1000)
        self._acquire = redis.register_script(ACQUIRE)
        self._refresh = redis.register_script(REFRESH)
        self._release = redis.register_script(RELEASE)
        self._take_budget = redis.register_script(TAKE_BUDGET)
        self.held: dict[tuple[str, str], str] = {}  # (holders, member) -> owner key, refreshed
        self.refreshed_at = time.monotonic()
        self._tasks: set[asyncio.Task[object]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.limiter: Limiter | None = None

    def unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(f"Redis at {self.where} does not answer")

    async def _take(self, holders: str, owner_key: str, member: str, limit: int, owner: str) -> bool:
        try:
            taken = await self._acquire(keys=[holders, owner_key], args=[member, limit, self.ttl_ms, owner])
        except (RedisError, OSError) as exc:
            log.error("taking %s in Redis failed: %s", holders, exc)
            raise self.unavailable() from exc
        if taken:
            self.held[(holders, member)] = owner_key
        return bool(taken)

    def _give_back(self, holders: str, member: str) -> None:
        owner_key = self.held.pop((holders, member), None)
        if owner_key is not None:  # a dead Redis forgets it anyway, within ttl_s
            self._spawn(self._release(keys=[holders, owner_key], args=[member]))

    async def open(self, key_id: str, session_id: str, limit: int) -> bool:
        holders = sessions_of(key_id)
        return await self._take(holders, holders, session_id, limit, "")

    def close(self, key_id: str, session_id: str) -> None:
        self._give_back(sessions_of(key_id), session_id)

    async def claim(self, session_id: str, key_id: str, holder: str) -> bool:
        holders, owner_key = holders_of(session_id)
        return await self._take(holders, owner_key, holder, 0, key_id)

    def unclaim(self, session_id: str, holder: str) -> None:
        self._give_back(holders_of(session_id)[0], holder)

    async def take_over(self, session_id: str, holder: str, wait_s: float) -> None:
        """Every node ends its older holders of ``session_id`` (each says "leaving" first); this
        waits until those have let go. A holder on a dead node never answers and is not waited for:
        it can save nothing more, and its claim expires on its own."""
        holders = holders_of(session_id)[0]
        try:
            await self.redis.publish(TAKEOVER, json.dumps([session_id, holder]))
            started = time.monotonic()
            async with asyncio.timeout(wait_s):
                while others := {m.decode() for m in await self.redis.zrange(holders, 0, -1)} - {holder}:
                    if time.monotonic() - started >= ANSWER_S:
                        if not await self.redis.exists(*(leaving(other) for other in others)):
                            return
                    await asyncio.sleep(TAKEOVER_POLL_S)
        except (RedisError, OSError) as exc:  # the lease taken next says so to the client
            log.error("taking over session %s in Redis failed: %s", session_id, exc)

    def bucket(self, name: str, rate_per_s: float, capacity: float) -> SharedBucket:
        return SharedBucket(self, f"{PREFIX}budget:{name}", rate_per_s, capacity)

    def _spawn(self, work) -> asyncio.Task[object]:
        async def quietly() -> object:
            try:
                return await work
            except (RedisError, OSError) as exc:
                log.warning("a Redis update failed (it expires on its own): %s", exc)
                return None

        task = asyncio.ensure_future(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- keeping holdings alive, hearing revocations -----------------------------------------

    async def start(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._loops = [asyncio.create_task(self._keep_alive()), asyncio.create_task(self._hear_broadcasts())]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._loops, return_exceptions=True)
        held, self.held = list(self.held.items()), {}
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2):  # leave no place taken for ttl_s after a clean stop
                for (holders, member), owner_key in held:
                    await self._release(keys=[holders, owner_key], args=[member])

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            held = list(self.held.items())
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for (holders, member), owner_key in held:
                        await self._refresh(
                            keys=[holders, owner_key], args=[member, self.ttl_ms], client=pipe
                        )
                    kept = await pipe.execute()
                self.refreshed_at = time.monotonic()
            except (RedisError, OSError) as exc:
                log.error("refreshing session leases in Redis failed: %s", exc)
                if time.monotonic() - self.refreshed_at > self.ttl_ms / 1000:
                    self._end_sessions(lambda _session_id: True, self.unavailable().message)
                continue
            lost = {member for ((_, member), still) in zip(held, kept, strict=True) if not still}
            if lost:
                self._end_sessions(lost.__contains__, "session lease lost (shared state)")

    def _end_sessions(self, which, reason: str) -> None:
        for lease in self.limiter.leases() if self.limiter else []:
            if which(lease.session_id):
                lease.end(reason, 1011)

    async def _hear_broadcasts(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(REVOKED, TAKEOVER)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None and self.limiter is not None:
                            self._heard(message["channel"].decode(), message["data"].decode())
            except (RedisError, OSError) as exc:
                log.error("listening to the other nodes failed, again in 1 s: %s", exc)
                await asyncio.sleep(1)

    def _heard(self, channel: str, data: str) -> None:
        assert self.limiter is not None
        if channel == REVOKED:
            ended = self.limiter.end_key(data)
            self.limiter.on_revoked(data)
            log.info("key %s revoked (broadcast): ended %d sessions here", data, ended)
        elif channel == TAKEOVER:
            session_id, holder = json.loads(data)
            for older in self.limiter.on_taken_over(session_id, holder):
                self._spawn(self.redis.set(leaving(older), "1", px=LEAVING_MS))


async def broadcast_revoked(redis: Redis, key_id: str) -> None:
    """Tells every node that ``key_id`` is revoked: they end its sessions at once."""
    await redis.publish(REVOKED, key_id)


class SharedBucket:
    """A key's budget (messages or audio seconds) in Redis, for every node. ``take`` answers at
    once, so each node spends from a small reserve that it takes from Redis atomically and tops
    up in the background: all nodes together never spend more than the budget allows. A node
    may refuse briefly while its top-up is in flight, never admit more."""

    def __init__(self, book: RedisBook, name: str, rate_per_s: float, capacity: float) -> None:
        self.book, self.name, self.rate, self.capacity = book, name, rate_per_s, capacity
        # Whole units (messages) so no node strands a fraction of one; a quarter of the budget.
        self.chunk = max(math.ceil(capacity / 4), min(1.0, capacity))
        self.reserve = 0.0
        self._top_up: asyncio.Task[object] | None = None
        self.refill()

    def take(self, amount: float) -> bool:
        if amount <= self.reserve:
            self.reserve -= amount
            if self.reserve < self.chunk / 2:
                self.refill()
            return True
        self.refill(amount)
        return False

    def refill(self, at_least: float = 0.0) -> None:
        if self._top_up is not None and not self._top_up.done():
            return
        with contextlib.suppress(RuntimeError):  # no event loop: nothing to top up with
            self._top_up = self.book._spawn(self._fetch(max(self.chunk, at_least) - self.reserve))

    async def _fetch(self, wanted: float) -> None:
        if wanted > 0:
            granted = await self.book._take_budget(keys=[self.name], args=[self.rate, self.capacity, wanted])
            self.reserve += float(granted)

    async def ready(self) -> None:
        if self._top_up is not None:
            await asyncio.wait({self._top_up}, timeout=2)


class RedisResume:
    """Soca's resumable conversations in Redis (see service/resume.py), each for ``grace_s``."""

    def __init__(self, redis: Redis, grace_s: float) -> None:
        self.redis, self.grace_ms = redis, int(grace_s * 1000)
        self._take = redis.register_script(TAKE_SAVED)

    async def save(self, session_id: str, saved: Saved) -> None:
        if self.grace_ms > 0:
            await self.redis.set(f"{PREFIX}resume:{session_id}", saved.to_json(), px=self.grace_ms)

    async def owner(self, session_id: str) -> str | None:
        raw = await self._read(self.redis.get(f"{PREFIX}resume:{session_id}"))
        return Saved.from_json(raw).owner if raw else None

    async def take(self, session_id: str, owner: str) -> Saved | None:
        raw = await self._read(self._take(keys=[f"{PREFIX}resume:{session_id}"], args=[owner]))
        return Saved.from_json(raw) if raw else None

    @staticmethod
    async def _read(request) -> bytes | None:
        """A read that fails counts as nothing saved: the session starts afresh (its lease, taken
        from the same Redis, tells the client when Redis is really gone)."""
        try:
            return await request
        except (RedisError, OSError) as exc:
            log.error("reading a resumable session from Redis failed: %s", exc)
            return None
