"""Conversation history on disk: every committed user and assistant turn, as it happens.

SQLite in WAL mode with ``synchronous=FULL`` and one commit per turn, so a server killed with
SIGKILL (or a power cut) loses no turn that was committed. Writes run on one writer thread, off
the event loop; a failed write (disk full, I/O error) is reported to the session that made it and
the store carries on for everyone else.

``cluster.postgres.PostgresHistory`` keeps the same interface in PostgreSQL when
``VOXLOOP_DATABASE_URL`` is set, so every node answers ``GET /v1/sessions/{id}``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from voxloop.backends.llm.base import ChatMessage

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    key_id TEXT,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at REAL NOT NULL,
    message_id TEXT  -- the engine's message id: truncate and delete follow the conversation
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, id);
"""
MAX_PENDING = 1000  # writes queued behind a slow disk; beyond this they are refused, not buffered
MAX_TEXT = 100_000


class HistoryError(Exception):
    """A turn could not be stored; the message is fit to send to the client."""


@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    at: float  # Unix time
    message_id: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"role": self.role, "text": self.text, "at": self.at}


class ConversationStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="history")
        self._pending = 0
        self._lock = threading.Lock()
        self._db = self._writer.submit(self._open).result()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        if "message_id" not in {row[1] for row in db.execute("PRAGMA table_info(turns)")}:
            db.execute("ALTER TABLE turns ADD COLUMN message_id TEXT")  # a store from before ids
        return db

    # ---- writing ------------------------------------------------------------------------

    def submit(self, session_id: str, turns: Iterable[Turn], key_id: str | None = None) -> Future[None]:
        """Queues one commit of ``turns``; the future fails with HistoryError."""
        # A lone surrogate cannot be stored (UTF-8): it is replaced, the turn kept.
        rows = [(session_id, key_id, t.role, _storable(t.text[:MAX_TEXT]), t.at, t.message_id) for t in turns]
        sql = "INSERT INTO turns (session_id, key_id, role, text, at, message_id) VALUES (?, ?, ?, ?, ?, ?)"
        return self._queue(sql, rows)

    def edit(self, session_id: str, message_id: str, text: str | None) -> Future[None]:
        """Queues a change to a stored message: its new ``text``, or (None) its removal."""
        if text is None:
            return self._queue(
                "DELETE FROM turns WHERE session_id = ? AND message_id = ?", [(session_id, message_id)]
            )
        sql = "UPDATE turns SET text = ? WHERE session_id = ? AND message_id = ?"
        return self._queue(sql, [(_storable(text[:MAX_TEXT]), session_id, message_id)])

    def _queue(self, sql: str, rows: list[tuple]) -> Future[None]:
        with self._lock:
            if self._pending >= MAX_PENDING:
                refused: Future[None] = Future()
                refused.set_exception(HistoryError("history store is behind: turn not saved"))
                return refused
            self._pending += 1
        return self._writer.submit(self._write, sql, rows)

    def _write(self, sql: str, rows: list[tuple]) -> None:
        try:
            with self._db:  # one transaction: committed (and synced) or rolled back
                self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            log.error("history write failed: %s", exc)
            raise HistoryError(f"conversation history not saved: {exc}") from exc
        finally:
            with self._lock:
                self._pending -= 1

    async def record(
        self, session_id: str, role: str, text: str, at: float | None = None, key_id: str | None = None
    ) -> None:
        """Stores one turn; returns once it is on disk; raises HistoryError."""
        turn = Turn(role, text, time.time() if at is None else at)
        await asyncio.wrap_future(self.submit(session_id, [turn], key_id))

    def listener(
        self, session_id: str, key_id: str | None, on_error: Callable[[str], object]
    ) -> StoreListener:
        """A listener for the engine History: it stores each committed turn (user and assistant
        text; tool traffic is left out), follows truncations and deletions, and calls ``on_error``
        with a message, on the event loop, when a write fails."""
        return StoreListener(self, session_id, key_id, on_error, asyncio.get_running_loop())

    # ---- reading ------------------------------------------------------------------------

    def turns(self, session_id: str, key_id: str | None) -> list[Turn]:
        """The turns ``key_id`` stored under ``session_id`` (every key's when None: the operator).
        Each row is checked, not just the first: a session id names a conversation per key, so
        one key never reads another's turns. Runs on the caller's thread with its own connection
        (WAL readers do not wait for the writer)."""
        query = "SELECT role, text, at FROM turns WHERE session_id = ?"
        params: tuple[str, ...] = (session_id,)
        if key_id is not None:
            query, params = query + " AND key_id = ?", (session_id, key_id)
        return [Turn(role, text, at) for role, text, at in self._read(query + " ORDER BY id", params)]

    def owners(self, session_id: str) -> set[str | None]:
        """The keys that stored turns under ``session_id``."""
        rows = self._read("SELECT DISTINCT key_id FROM turns WHERE session_id = ?", (session_id,))
        return {key_id for (key_id,) in rows}

    async def read_turns(self, session_id: str, key_id: str | None) -> list[Turn]:
        """:meth:`turns`, off the event loop (the interface the server uses)."""
        return await asyncio.to_thread(self.turns, session_id, key_id)

    async def read_owners(self, session_id: str) -> set[str | None]:
        return await asyncio.to_thread(self.owners, session_id)

    def _read(self, query: str, params: tuple[str, ...]) -> list[tuple]:
        db = sqlite3.connect(self.path, timeout=5)
        try:
            return db.execute(query, params).fetchall()
        finally:
            db.close()

    async def open(self) -> None:
        pass  # opened at construction: a broken file fails the start, not a session

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._writer.submit(self._db.close)
        self._writer.shutdown(wait=True)


@dataclass
class StoreListener:
    store: ConversationStore  # or PostgresHistory: submit and edit return futures of either kind
    session_id: str
    key_id: str | None
    on_error: Callable[[str], object]
    loop: asyncio.AbstractEventLoop

    def inserted(self, messages: list[ChatMessage]) -> None:
        now = time.time()
        turns = [Turn(m.role, m.content, now, m.id) for m in messages if _spoken(m)]
        if turns:
            self._report(self.store.submit(self.session_id, turns, self.key_id))

    def truncated(self, message: ChatMessage) -> None:
        self._report(self.store.edit(self.session_id, message.id, message.content))

    def deleted(self, message: ChatMessage) -> None:
        self._report(self.store.edit(self.session_id, message.id, None))

    def _report(self, future: Future[None] | asyncio.Future[None]) -> None:
        def done(finished: Future[None] | asyncio.Future[None]) -> None:
            if finished.cancelled():
                return
            if (exc := finished.exception()) is not None:
                self.loop.call_soon_threadsafe(self.on_error, str(exc))

        future.add_done_callback(done)


def _spoken(message: ChatMessage) -> bool:
    return message.role in ("user", "assistant") and bool(message.content.strip())


def _storable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
