"""API keys and conversation history in PostgreSQL (asyncpg), shared by every node.

The same interfaces as the embedded stores (:class:`~voxloop.service.keys.AsyncKeys`, and
``ConversationStore``'s submit/edit/listener/read_turns/read_owners), so the server does not know
which it has. The schema is created at start if missing (under an advisory lock: nodes starting
together do not race). Each history write is one transaction, committed in the order the
session made them (one writer task), so a node killed later loses no committed turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from voxloop.service.history_store import MAX_PENDING, MAX_TEXT, HistoryError, StoreListener, Turn, _storable
from voxloop.service.keys import KeyInfo, KeyLimits, digest, info_of, match_one, new_key

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS voxloop_api_keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    max_sessions INTEGER,
    messages_per_s DOUBLE PRECISION,
    audio_s_per_min DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS voxloop_turns (
    id BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL,
    key_id TEXT,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    message_id TEXT
);
CREATE INDEX IF NOT EXISTS voxloop_turns_by_session ON voxloop_turns (session_id, id);
"""
SCHEMA_LOCK = 0x766F786C  # "voxl": one node at a time creates the schema


class Database:
    """One connection pool for the keys and the history; opened in the event loop, at start."""

    def __init__(self, url: str, where: str) -> None:
        self.url, self.where = url, where
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=10, timeout=5, command_timeout=5
        )
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await db.execute(SCHEMA)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise HistoryError(f"PostgreSQL at {self.where} is not connected")
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PostgresKeys:
    def __init__(self, database: Database, defaults: KeyLimits | None = None) -> None:
        self.db, self.defaults = database, defaults or KeyLimits()

    async def identify(self, key: str) -> KeyInfo | None:
        row = await self.db.pool.fetchrow("SELECT * FROM voxloop_api_keys WHERE digest = $1", digest(key))
        info = info_of(row, self.defaults) if row else None
        return info if info is not None and info.revoked_at is None else None

    async def create(
        self,
        name: str = "",
        max_sessions: int | None = None,
        messages_per_s: float | None = None,
        audio_s_per_min: float | None = None,
    ) -> tuple[str, KeyInfo]:
        key_id, key = new_key(max_sessions, messages_per_s, audio_s_per_min)
        row = await self.db.pool.fetchrow(
            "INSERT INTO voxloop_api_keys VALUES ($1, $2, $3, $4, NULL, $5, $6, $7) RETURNING *",
            key_id, digest(key), name, time.time(), max_sessions, messages_per_s, audio_s_per_min,
        )  # fmt: skip
        return key, info_of(row, self.defaults)

    async def list(self) -> list[KeyInfo]:
        rows = await self.db.pool.fetch("SELECT * FROM voxloop_api_keys ORDER BY created_at")
        return [info_of(row, self.defaults) for row in rows]

    async def revoke(self, id_or_prefix: str) -> KeyInfo:
        match = match_one(await self.list(), id_or_prefix)
        row = await self.db.pool.fetchrow(
            "UPDATE voxloop_api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING *",
            time.time(), match.id,
        )  # fmt: skip
        return info_of(row, self.defaults)

    async def revoked_ids(self) -> set[str]:
        rows = await self.db.pool.fetch("SELECT id FROM voxloop_api_keys WHERE revoked_at IS NOT NULL")
        return {row["id"] for row in rows}

    async def has_active_keys(self) -> bool:
        return bool(
            await self.db.pool.fetchval("SELECT 1 FROM voxloop_api_keys WHERE revoked_at IS NULL LIMIT 1")
        )

    async def close(self) -> None:
        pass  # the Database closes the pool


Write = tuple[str, list[tuple[Any, ...]], "asyncio.Future[None]"]


class PostgresHistory:
    """The conversation history (see service/history_store.py for the embedded one)."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self._writes: asyncio.Queue[Write] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._writes = asyncio.Queue(MAX_PENDING)
        self._writer = asyncio.create_task(self._write_forever())

    def submit(
        self, session_id: str, turns: Iterable[Turn], key_id: str | None = None
    ) -> asyncio.Future[None]:
        rows = [(session_id, key_id, t.role, _storable(t.text[:MAX_TEXT]), t.at, t.message_id) for t in turns]
        sql = (
            "INSERT INTO voxloop_turns (session_id, key_id, role, text, at, message_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
        )
        return self._queue(sql, rows)

    def edit(self, session_id: str, message_id: str, text: str | None) -> asyncio.Future[None]:
        if text is None:
            sql = "DELETE FROM voxloop_turns WHERE session_id = $1 AND message_id = $2"
            return self._queue(sql, [(session_id, message_id)])
        sql = "UPDATE voxloop_turns SET text = $1 WHERE session_id = $2 AND message_id = $3"
        return self._queue(sql, [(_storable(text[:MAX_TEXT]), session_id, message_id)])

    def _queue(self, sql: str, rows: list[tuple[Any, ...]]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            if self._writes is None:
                raise asyncio.QueueFull
            self._writes.put_nowait((sql, rows, done))
        except asyncio.QueueFull:
            done.set_exception(HistoryError("history store is behind: turn not saved"))
        return done

    async def _write_forever(self) -> None:
        assert self._writes is not None
        while True:
            sql, rows, done = await self._writes.get()
            try:
                async with self.db.pool.acquire() as db, db.transaction():
                    await db.executemany(sql, rows)
                done.set_result(None)
            except (asyncpg.PostgresError, OSError, TimeoutError, HistoryError) as exc:
                log.error("history write failed: %s", exc)
                reason = f"conversation history not saved: PostgreSQL at {self.db.where}: {exc}"
                done.set_exception(HistoryError(reason))
            finally:
                self._writes.task_done()

    def listener(
        self, session_id: str, key_id: str | None, on_error: Callable[[str], object]
    ) -> StoreListener:
        return StoreListener(self, session_id, key_id, on_error, asyncio.get_running_loop())  # type: ignore[arg-type]

    async def read_turns(self, session_id: str, key_id: str | None) -> list[Turn]:
        query, params = "SELECT role, text, at FROM voxloop_turns WHERE session_id = $1", [session_id]
        if key_id is not None:
            query, params = query + " AND key_id = $2", [session_id, key_id]
        rows = await self.db.pool.fetch(query + " ORDER BY id", *params)
        return [Turn(row["role"], row["text"], row["at"]) for row in rows]

    async def read_owners(self, session_id: str) -> set[str | None]:
        rows = await self.db.pool.fetch(
            "SELECT DISTINCT key_id FROM voxloop_turns WHERE session_id = $1", session_id
        )
        return {row["key_id"] for row in rows}

    async def aclose(self) -> None:
        if self._writes is not None:  # what was queued is written before the pool closes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._writes.join(), 5)
        if self._writer is not None:
            self._writer.cancel()
