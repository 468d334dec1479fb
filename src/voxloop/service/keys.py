"""The API key store: an embedded SQLite file holding SHA-256 digests of keys, never the keys.

A key reads ``vxl_<id>_<secret>``: the id is public (``voxloop keys list`` and ``revoke`` use it),
the secret is 32 random bytes. Keys are random, so a plain SHA-256 is a safe digest (there is no
password to guess); lookups go by digest, so their timing says nothing about the key itself.
The CLI writes the file while the server reads it (WAL: readers never wait for the writer).

The server and the CLI use a store through :class:`AsyncKeys`: :class:`SqliteKeys` here (one node),
or ``cluster.postgres.PostgresKeys`` when ``VOXLOOP_DATABASE_URL`` names a database nodes share.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    max_sessions INTEGER,       -- NULL: the server's default
    messages_per_s REAL,
    audio_s_per_min REAL
)
"""


@dataclass(frozen=True)
class KeyLimits:
    """0 means unlimited."""

    max_sessions: int = 0
    messages_per_s: float = 0.0
    audio_s_per_min: float = 0.0


@dataclass(frozen=True)
class KeyInfo:
    """Who a request belongs to: a stored key, a configuration key or, with no keys at all, anyone."""

    id: str
    name: str
    limits: KeyLimits
    created_at: float = 0.0
    revoked_at: float | None = None
    stored: bool = False  # revocable (configuration keys live as long as the configuration)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()


class KeyStore:
    """One connection per call: the store is read rarely (once per session) and by two processes."""

    def __init__(self, path: Path, defaults: KeyLimits | None = None) -> None:
        self.path = path
        self.defaults = defaults or KeyLimits()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=5)
        db.row_factory = sqlite3.Row
        try:
            with db:  # commits, or rolls back on error
                yield db
        finally:
            db.close()

    def create(
        self,
        name: str = "",
        max_sessions: int | None = None,
        messages_per_s: float | None = None,
        audio_s_per_min: float | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key and its record; the key is returned here once and stored only as a digest."""
        key_id, key = new_key(max_sessions, messages_per_s, audio_s_per_min)
        with self._connect() as db:
            db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, NULL, ?, ?, ?)",
                (key_id, digest(key), name, time.time(), max_sessions, messages_per_s, audio_s_per_min),
            )
        info = self.get(key_id)
        assert info is not None
        return key, info

    def identify(self, key: str) -> KeyInfo | None:
        """The active key with this value, or None (unknown or revoked)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM api_keys WHERE digest = ?", (digest(key),)).fetchone()
        info = self._info(row) if row else None
        return info if info is not None and info.revoked_at is None else None

    def get(self, key_id: str) -> KeyInfo | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return self._info(row) if row else None

    def list(self) -> list[KeyInfo]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        return [self._info(row) for row in rows]

    def revoke(self, id_or_prefix: str) -> KeyInfo:
        """Revokes the one key whose id starts with ``id_or_prefix`` (a full key works too)."""
        match = match_one(self.list(), id_or_prefix)
        with self._connect() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), match.id),
            )
        info = self.get(match.id)
        assert info is not None
        return info

    def revoked_ids(self) -> set[str]:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL").fetchall()
        return {row["id"] for row in rows}

    def has_active_keys(self) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone()
        return row is not None

    def _info(self, row: sqlite3.Row) -> KeyInfo:
        return info_of(row, self.defaults)


def info_of(row, defaults: KeyLimits) -> KeyInfo:
    """A stored key's record (a SQLite or asyncpg row), its unset limits the server's defaults."""
    limits = KeyLimits(
        max_sessions=_or(row["max_sessions"], defaults.max_sessions),
        messages_per_s=_or(row["messages_per_s"], defaults.messages_per_s),
        audio_s_per_min=_or(row["audio_s_per_min"], defaults.audio_s_per_min),
    )
    return KeyInfo(row["id"], row["name"], limits, row["created_at"], row["revoked_at"], stored=True)


def _or(value, default):
    return default if value is None else value


class AsyncKeys(Protocol):
    """A key store as the server sees it: every call is awaited, none blocks the event loop."""

    async def identify(self, key: str) -> KeyInfo | None: ...
    async def create(
        self,
        name: str = "",
        max_sessions: int | None = None,
        messages_per_s: float | None = None,
        audio_s_per_min: float | None = None,
    ) -> tuple[str, KeyInfo]: ...
    async def list(self) -> list[KeyInfo]: ...
    async def revoke(self, id_or_prefix: str) -> KeyInfo: ...
    async def revoked_ids(self) -> set[str]: ...
    async def has_active_keys(self) -> bool: ...
    async def close(self) -> None: ...


class SqliteKeys:
    """The embedded :class:`KeyStore`, its calls run on a worker thread."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def identify(self, key: str) -> KeyInfo | None:
        return await asyncio.to_thread(self.store.identify, key)

    async def create(self, *args, **kwargs) -> tuple[str, KeyInfo]:
        return await asyncio.to_thread(self.store.create, *args, **kwargs)

    async def list(self) -> list[KeyInfo]:
        return await asyncio.to_thread(self.store.list)

    async def revoke(self, id_or_prefix: str) -> KeyInfo:
        return await asyncio.to_thread(self.store.revoke, id_or_prefix)

    async def revoked_ids(self) -> set[str]:
        return await asyncio.to_thread(self.store.revoked_ids)

    async def has_active_keys(self) -> bool:
        return await asyncio.to_thread(self.store.has_active_keys)

    async def close(self) -> None:
        pass


def match_one(infos: list[KeyInfo], id_or_prefix: str) -> KeyInfo:
    """The one key whose id starts with ``id_or_prefix`` (a full key works too)."""
    wanted = id_or_prefix.strip()
    if wanted.startswith("vxl_"):
        wanted = wanted.split("_")[1]
    matches = [info for info in infos if wanted and info.id.startswith(wanted)]
    if len(matches) != 1:
        raise ValueError(f"{len(matches)} keys match {id_or_prefix!r}; give a longer id")
    return matches[0]


def new_key(
    max_sessions: int | None, messages_per_s: float | None, audio_s_per_min: float | None
) -> tuple[str, str]:
    """A fresh (key id, key), after checking the limits."""
    for value in (max_sessions, messages_per_s, audio_s_per_min):
        if value is not None and value < 0:
            raise ValueError("limits must be 0 (unlimited) or more")
    key_id = secrets.token_hex(4)
    return key_id, f"vxl_{key_id}_{secrets.token_urlsafe(32)}"
