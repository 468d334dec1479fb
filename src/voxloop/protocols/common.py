"""What every protocol adapter needs: a session set up from the server settings, and a loop that
ends the session when the first of its tasks (client gone, client stalled, events failing) ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from voxloop.backends.registry import Backends
from voxloop.engine.segmenter import SegmenterConfig
from voxloop.engine.session import Session, SessionConfig
from voxloop.engine.tools import builtin_tools


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
