"""The conversation store on its own: turns in order per session, what a History listener keeps,
and write failures reported instead of raised into the engine.
(The store inside a real server: tests/test_shutdown.py and tests/test_faults.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from voxloop.backends.llm.base import ChatMessage, ToolCall
from voxloop.engine.history import History
from voxloop.service.history_store import ConversationStore, HistoryError


async def test_turns_in_order_per_session(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history.db")
    await asyncio.gather(*(store.record("a", "user", f"question {i}", at=100.0 + i) for i in range(5)))
    await store.record("b", "assistant", "other session", key_id="k1")
    turns = store.turns("a", None)
    assert [t.text for t in sorted(turns, key=lambda t: t.at)] == [f"question {i}" for i in range(5)]
    assert store.owners("b") == {"k1"} and store.owners("a") == {None}
    assert store.turns("nobody", None) == [] and store.turns("b", "k2") == []
    # One session id, two keys: each key reads its own rows only, the operator (None) all of them.
    await store.record("b", "user", "k2's turn", key_id="k2")
    assert [t.text for t in store.turns("b", "k1")] == ["other session"]
    assert [t.text for t in store.turns("b", "k2")] == ["k2's turn"]
    assert len(store.turns("b", None)) == 2 and store.owners("b") == {"k1", "k2"}
    store.close()
    db = sqlite3.connect(tmp_path / "history.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_history_listener_keeps_spoken_turns_only(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history.db")
    errors: list[str] = []
    history = History()
    history.listeners.append(store.listener("s1", "k", errors.append))
    call = ToolCall("c1", "get_time", {})
    history.insert(
        [
            ChatMessage("user", "What time is it?"),
            ChatMessage("assistant", "", tool_calls=[call]),
            ChatMessage("tool", '{"time": "10:00"}', tool_call_id="c1"),
            ChatMessage("assistant", "It is ten."),
        ]
    )
    for _ in range(100):
        if found := store.turns("s1", "k"):
            break
        await asyncio.sleep(0.02)
    assert [(t.role, t.text) for t in found] == [
        ("user", "What time is it?"),
        ("assistant", "It is ten."),
    ]
    assert not errors
    store.close()


async def test_write_failures_are_reported_not_raised_into_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = ConversationStore(path)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: every write fails
    store._db.execute("PRAGMA busy_timeout = 50")
    with pytest.raises(HistoryError, match="not saved"):
        await store.record("s", "user", "lost")
    errors: list[str] = []
    history = History()
    history.listeners.append(store.listener("s", None, errors.append))
    history.insert([ChatMessage("user", "hi"), ChatMessage("assistant", "hello")])  # does not raise
    for _ in range(200):
        if errors:
            break
        await asyncio.sleep(0.02)
    assert errors and "not saved" in errors[0]
    blocker.rollback()
    await store.record("s", "user", "saved again")  # the store recovers once the disk does
    assert [t.text for t in store.turns("s", None)] == ["saved again"]
    store.close()


async def test_truncate_and_delete_keep_the_store_equal_to_the_context(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history.db")
    errors: list[str] = []
    history = History()
    history.listeners.append(store.listener("s", None, errors.append))
    question, story = ChatMessage("user", "Tell me a story."), ChatMessage("assistant", "Once upon a time.")
    aside = ChatMessage("user", "By the way.")
    history.insert([question, story])
    history.insert([aside])
    history.truncate(story.id, "Once upon")  # the client heard this much
    history.delete(aside.id)
    history.truncate("no-such-id", "ignored")
    assert [(m.role, m.content) for m in history.messages] == [
        ("user", "Tell me a story."),
        ("assistant", "Once upon"),
    ]
    store.close()  # waits for the queued writes
    reopened = ConversationStore(tmp_path / "history.db")
    found = reopened.turns("s", None)
    assert [(t.role, t.text) for t in found] == [(m.role, m.content) for m in history.messages]
    history.listeners.clear()
    history.truncate(story.id, "")  # nothing heard: the message goes
    assert [m.id for m in history.messages] == [question.id]
    assert not errors
    reopened.close()
