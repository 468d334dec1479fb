"""The nodes of a cluster, in Redis: each node writes its id, address, live sessions and
readiness every ``HEARTBEAT_S``; a record that is not renewed expires, so a dead node drops out
of the list within ``3 * HEARTBEAT_S``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from voxloop.service.cluster.redis_state import PREFIX

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
NODES = PREFIX + "nodes"


class NodeRegistry:
    def __init__(self, redis: Redis, node_id: str, address: str, load: Callable[[], dict[str, Any]]) -> None:
        self.redis, self.node_id, self.address, self.load = redis, node_id, address, load
        self._beating: asyncio.Task[None] | None = None

    def record(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address, "at": time.time(), **self.load()}

    async def beat(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{NODES}:{self.node_id}", json.dumps(self.record()), px=int(HEARTBEAT_S * 3000))
            pipe.sadd(NODES, self.node_id)
            await pipe.execute()

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes' last heartbeats (forgetting the ids whose record expired)."""
        ids = sorted(member.decode() for member in await self.redis.smembers(NODES))
        records = await self.redis.mget([f"{NODES}:{node_id}" for node_id in ids]) if ids else []
        gone = [node_id for node_id, raw in zip(ids, records, strict=True) if raw is None]
        if gone:
            await self.redis.srem(NODES, *gone)
        return [json.loads(raw) for raw in records if raw is not None]

    async def start(self) -> None:
        self._beating = asyncio.create_task(self._beat_forever())

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(f"{NODES}:{self.node_id}")
            await self.redis.srem(NODES, self.node_id)

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.error("node heartbeat to Redis failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)
