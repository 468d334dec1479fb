"""The session's background tasks, started, watched and ended in one place.

Modelled on ``asyncio.TaskGroup`` (every task is started through the group and ``close`` cancels
and awaits them all) without its rule that one failure cancels the rest: a failed turn is logged
and reported, and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class SessionTasks:
    def __init__(self, on_failure: Callable[[asyncio.Task[None], BaseException], None]) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_failure = on_failure
        self.closed = False

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if self.closed:
            task.cancel()  # started as the session closed: it ends at its first await
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error("session task failed", exc_info=exc)
        self._on_failure(task, exc)

    async def close(self) -> None:
        """Cancels every task and waits for them all to end."""
        self.closed = True
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
