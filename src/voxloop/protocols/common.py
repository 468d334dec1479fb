"""What every protocol adapter needs: a session set up from the server settings, a loop that
ends the session when the first of its tasks (client gone, client stalled, events failing) ends,
and the key's lease: its audio budget and the conversation history on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from voxloop.backends.llm.base import ChatMessage
from voxloop.backends.registry import Backends
from voxloop.engine.segmenter import SegmenterConfig
from voxloop.engine.session import Session, SessionConfig
from voxloop.engine.tools import builtin_tools
from voxloop.service.limits import Lease, LimitExceeded

SUPPORTED_INPUT_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
SESSION_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")  # what a client may name a conversation


def check_sample_rate(rate: object) -> int:
    """A client's input sample rate, or ValueError naming the ones accepted."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SUPPORTED_INPUT_RATES:
        raise ValueError(f"unsupported sample_rate {rate!r}; use one of {list(SUPPORTED_INPUT_RATES)}")
    return rate


def new_session(backends: Backends, **changes: Any) -> Session:
    """A Session on the server's defaults, then ``changes`` (ValueError for a bad voice/language)."""
    settings = backends.settings
    turn = SegmenterConfig(
        hangover_ms=settings.turn_hangover_ms,
        min_speech_ms=settings.turn_min_speech_ms,
        pre_roll_ms=settings.turn_pre_roll_ms,
    )
    config = SessionConfig(voice=settings.default_voice, language=settings.default_language, turn=turn)
    session = Session(backends, config, builtin_tools.subset(settings.server_tools))
    session.history.spoken_style = settings.spoken_style
    if changes:
        try:
            session.configure(**changes)
        except Exception:
            session.idle_watch.cancel()  # what close() does, without awaiting: nothing ran yet
            session.segmenter.vad.close()
            raise
    return session


async def run_session(session: Session, *coroutines: Coroutine[Any, Any, None]) -> bool:
    """Runs the protocol's coroutines (receive, forward events, ...) until the first one ends or the
    client stalls (it stopped reading: it must not hold the models); then stops the rest and closes
    the session. Returns True when the client stalled, so the caller can say so as it hangs up."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    tasks.append(asyncio.create_task(session.stalled.wait()))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await session.close()
    return session.stalled.is_set()


def parse_json(raw: str) -> Any:
    """JSON from a client, or ValueError with a message fit to send back (hostile nesting too).
    Lone surrogates (``"\\ud800"``) become U+FFFD: they cannot be encoded, so one would fail every
    later LLM call, TTS and history write of the session."""
    try:
        value = json.loads(raw)
        return without_surrogates(value) if "\\u" in raw else value  # only an escape makes one
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise ValueError("not valid JSON (nested too deeply)") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ValueError("not valid JSON (a number too long)") from exc


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): without_surrogates(item) for key, item in value.items()}
    return value


def parse_message(raw: str) -> dict[str, Any]:
    """A client message that must be a JSON object with a string ``type``; ValueError otherwise."""
    try:
        message = parse_json(raw)
    except ValueError as exc:
        raise ValueError(f"invalid message: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("messages must be JSON objects with a string 'type'")
    return message


def keep_history(
    session: Session,
    state: Any,
    lease: Lease | None,
    report: Callable[[str], Awaitable[object]],
    session_id: str = "",
) -> None:
    """Every committed turn of ``session`` goes to the conversation store (when the server keeps
    one), under ``session_id`` or the lease's. A failed write is found off the protocol's receive
    path, so ``report`` (the protocol's error sender) runs as a task of its own."""
    store = getattr(state, "history", None)
    if store is None or lease is None:
        return
    reports: set[asyncio.Task[object]] = set()  # held here so a pending report is not collected

    def on_error(message: str) -> None:
        task = asyncio.ensure_future(report(message))
        reports.add(task)
        task.add_done_callback(reports.discard)

    session.history.listeners.append(store.listener(session_id or lease.session_id, lease.key.id, on_error))


async def stored_by_others(state: Any, session_id: str, key_id: str) -> bool:
    """Whether the history store keeps turns of another key under ``session_id``."""
    store = getattr(state, "history", None)
    if store is None:
        return False
    return bool(await store.read_owners(session_id) - {key_id})


async def continue_conversation(state: Any, session: Session, lease: Lease, session_id: str) -> None:
    """A client reconnecting under the id of its key's earlier conversation continues it, on any
    node that shares the history store: the stored turns come back as ``session``'s history and the
    id is held for this key while the session lives. Raises ValueError for an id that is malformed,
    or live or stored under another key (which learns nothing more of it)."""
    if not SESSION_ID.fullmatch(session_id):
        raise ValueError("'session_id' must be 1 to 128 letters, digits or _.:-")
    claim = await state.limits.claim(session_id, lease.key.id)
    if claim is None:
        raise ValueError("session_id is in use by another key")
    lease.claims.append(claim)  # released with the lease
    if await stored_by_others(state, session_id, lease.key.id):
        raise ValueError("session_id is in use by another key")
    store = getattr(state, "history", None)
    if store is not None:
        turns = await store.read_turns(session_id, lease.key.id)
        # Inserted before the history listener is attached: they are stored already.
        session.history.insert([ChatMessage(turn.role, turn.text) for turn in turns])


def admit_audio(lease: Lease | None, seconds: float) -> tuple[bool, str | None]:
    """Whether ``seconds`` of client audio fit the key's budget, and an error to tell the client
    now (at most one a second: a flooding client is not answered frame by frame)."""
    if lease is None:
        return True, None
    try:
        lease.audio(seconds)
        return True, None
    except LimitExceeded as exc:
        return False, exc.message if lease.report_due() else None
