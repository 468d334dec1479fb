"""The stores a node uses, chosen by configuration: embedded (SQLite and in-process, one node) or
shared by many nodes (``VOXLOOP_REDIS_URL``: session leases, budgets, revocations, Soca resume,
the node registry; ``VOXLOOP_DATABASE_URL``: API keys and conversation history in PostgreSQL).
Either can be set without the other. Redis and asyncpg are imported only when configured."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from voxloop.config import Settings
from voxloop.service.history_store import ConversationStore
from voxloop.service.keys import AsyncKeys, KeyLimits, KeyStore, SqliteKeys
from voxloop.service.limits import LocalBook, SessionBook
from voxloop.service.resume import Resumable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from voxloop.service.cluster.postgres import Database, PostgresHistory
    from voxloop.service.cluster.registry import NodeRegistry

CONNECT_TIMEOUT_S = 5.0


class Unreachable(ValueError):
    """A configured Redis or PostgreSQL did not answer at start (the CLI prints it on one line)."""


def redacted(url: str) -> str:
    """``url`` without its password, fit for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_client(url: str) -> Redis:
    from redis.asyncio import Redis

    # Timeouts: a Redis that stops answering fails the call (a clear error), never hangs it.
    return Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)


@dataclass
class Stores:
    keys: AsyncKeys
    book: SessionBook = field(default_factory=LocalBook)
    history: ConversationStore | PostgresHistory | None = None
    resume: Resumable | None = None  # None: Soca keeps resumable sessions in this process
    registry: NodeRegistry | None = None
    redis: Redis | None = None
    database: Database | None = None
    redis_url: str = ""

    async def open(self) -> None:
        """Connects to what is configured; raises Unreachable with a one-line reason."""
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.ping(), CONNECT_TIMEOUT_S)
            except Exception as exc:
                raise Unreachable(
                    f"cannot reach Redis at {redacted(self.redis_url)}: {_reason(exc)}"
                ) from exc
        if self.database is not None:
            try:
                await asyncio.wait_for(self.database.open(), CONNECT_TIMEOUT_S * 2)
            except Exception as exc:
                where = self.database.where
                raise Unreachable(f"cannot reach PostgreSQL at {where}: {_reason(exc)}") from exc
        if self.history is not None:
            await self.history.open()
        if self.registry is not None:
            await self.registry.start()

    async def close(self) -> None:
        if self.registry is not None:
            await self.registry.stop()
        if self.history is not None:
            await self.history.aclose()
        if self.database is not None:
            await self.database.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()


def _reason(exc: BaseException) -> str:
    return (
        f"{type(exc).__name__}: {exc}".strip().rstrip(":").replace("\n", " ")
        if str(exc)
        else type(exc).__name__
    )


def node_id(settings: Settings) -> str:
    return settings.node_id or f"{socket.gethostname()}-{settings.port}"


def build_stores(settings: Settings, defaults: KeyLimits, load: Any = None) -> Stores:
    """The stores ``settings`` ask for (nothing is connected until :meth:`Stores.open`).
    ``load()`` gives this node's figures for the registry (live sessions, ready)."""
    if settings.database_url:
        from voxloop.service.cluster.postgres import Database, PostgresHistory, PostgresKeys

        database = Database(settings.database_url, redacted(settings.database_url))
        history = PostgresHistory(database) if settings.history_enabled else None
        stores = Stores(PostgresKeys(database, defaults), history=history, database=database)
    else:
        history = ConversationStore(settings.history_path) if settings.history_enabled else None
        stores = Stores(SqliteKeys(KeyStore(settings.keys_path, defaults)), history=history)
    if settings.redis_url:
        from voxloop.service.cluster.redis_state import RedisBook, RedisResume

        stores.redis, stores.redis_url = redis_client(settings.redis_url), settings.redis_url
        stores.book = RedisBook(stores.redis, redacted(settings.redis_url), settings.lease_ttl_s)
        stores.resume = RedisResume(stores.redis, settings.soca_resume_grace_s)
        if load is not None:
            from voxloop.service.cluster.registry import NodeRegistry

            address = settings.node_address or f"{settings.host}:{settings.port}"
            stores.registry = NodeRegistry(stores.redis, node_id(settings), address, load)
    return stores


async def open_for_cli(settings: Settings) -> Stores:
    """The configured stores for a command (``voxloop keys``), opened: no history, no registry."""
    stores = build_stores(settings.model_copy(update={"history_enabled": False}), KeyLimits())
    await stores.open()
    return stores


def check_reachable(settings: Settings) -> None:
    """Raises Unreachable (one line, no password) when a configured Redis or PostgreSQL does not
    answer: the server refuses to start rather than fail its first sessions."""
    if settings.redis_url or settings.database_url:
        asyncio.run(_check(settings))


async def _check(settings: Settings) -> None:
    stores = await open_for_cli(settings)
    await stores.close()
