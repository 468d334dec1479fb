"""Where blocking inference runs, so the event loop never waits on a model.

Three lanes on a 2-core machine: ``speech`` (STT), ``voice`` (TTS) and ``llm`` (token streams,
one chunk at a time). Keeping the LLM on its own single worker means a long generation can never
occupy every thread that speech needs. TTS has its own worker because its jobs are short and a
user waits for each first piece: on a shared lane a 20 ms synthesis waited behind two running
transcriptions of ~2 s each at six conversations (queue wait 0.11-0.15 s mean). Each lane serves
the job due first (see ``scheduler``); a job's deadline comes from its conversation, set by the
reply in :data:`DUE` for the LLM and TTS calls it makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from voxloop.backends import scheduler
from voxloop.backends.scheduler import Deadline, JobKind, Lane

T = TypeVar("T")

SPEECH = Lane("speech", workers=2)
VOICE = Lane("voice", workers=1)
LLM = Lane("llm", workers=1)
LANES = (SPEECH, VOICE, LLM)

# When the audio of the reply being made is due (monotonic time); unset: due now.
DUE: ContextVar[Deadline | None] = ContextVar("voxloop_due", default=None)


def _deadline() -> float | None:
    due = DUE.get()
    return due() if due is not None else None


async def run_in(lane: Lane, fn: Callable[[], T], kind: JobKind = JobKind.OTHER) -> T:
    """Runs ``fn`` on ``lane``, due when the current reply's audio is (now outside a reply)."""
    return await scheduler.run(lane, kind, fn, _deadline())


async def iterate_in(
    lane: Lane,
    make_iterator: Callable[[], Iterator[T]],
    kind: JobKind = JobKind.OTHER,
    chunk: int = 1,
    first_kind: JobKind | None = None,
) -> AsyncIterator[T]:
    """Drives a blocking iterator on ``lane``, ``chunk`` items a job, each job due when the
    current reply's audio is. Closing the async iterator stops the producer after its chunk."""
    due = DUE.get()
    async for item in scheduler.iterate(lane, kind, make_iterator, due, chunk, first_kind):
        yield item


def lag() -> float:
    """How late the most overdue job anyone is waiting for is, over all lanes (seconds)."""
    return max(lane.lag() for lane in LANES)
