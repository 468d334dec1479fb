"""Inference ordered by when its audio is due: earliest deadline first, speculation shed under load.

A spoken reply only has to stay ahead of its own playout, so the lanes (a few worker threads
each, see ``workers``) do not serve jobs in arrival order: each job carries a deadline, the
monotonic time by which its result is needed (a user waiting for the first word: now; a reply
with three seconds of audio buffered: three seconds from now), and a free worker takes the job
due first. Long streams (LLM tokens, TTS sentences) are split into one job per chunk, each
queued with a fresh deadline, so a waiting user's first token overtakes another reply's later
sentences.

Partial transcripts and speculative STT only make replies a little faster; when the lane is
behind (a job a user waits for is already late) they are shed, failing with :class:`Shed`,
before anything a user is waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import heapq
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

T = TypeVar("T")


class JobKind(StrEnum):
    STT_FINAL = "stt_final"
    STT_SPECULATIVE = "stt_speculative"
    STT_PARTIAL = "stt_partial"
    LLM_PREFILL = "llm_prefill"
    LLM_DECODE = "llm_decode"
    TTS = "tts"
    OTHER = "other"


SHEDDABLE = frozenset({JobKind.STT_PARTIAL, JobKind.STT_SPECULATIVE})

QUEUE_WAIT = Histogram(
    "voxloop_queue_wait_seconds",
    "Time an inference job waited for a worker, by job kind",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SHED = Counter("voxloop_jobs_shed", "Jobs shed under load, by job kind", ["kind"])
LAG = Gauge("voxloop_scheduler_lag_seconds", "How late the most overdue waiting job is, by lane", ["lane"])
RUN_TIME = Histogram(
    "voxloop_job_run_seconds",
    "Time an inference job ran on its worker, by job kind",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BUSY = Counter("voxloop_lane_busy_seconds", "Worker-seconds spent running jobs, by lane", ["lane"])


@functools.cache
def _libc() -> ctypes.CDLL:
    """Looked up once: ``find_library`` runs ``ldconfig``, and every lane thread names itself."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def name_thread(name: str) -> str:
    """Gives the calling thread ``name`` as the OS sees it (``top -H``, /proc/*/task/*/comm), which
    the threads it starts (a model's thread pool) inherit: CPU per lane can be read from outside.
    Returns the name it had."""
    with contextlib.suppress(Exception):  # not Linux, or no libc: names are only a convenience
        libc = _libc()
        old = ctypes.create_string_buffer(16)
        libc.prctl(16, old, 0, 0, 0)  # PR_GET_NAME
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        return old.value.decode(errors="replace")
    return ""


@contextlib.contextmanager
def threads_named(name: str) -> Iterator[None]:
    """Threads started inside (a model's pools, started as it loads) carry ``name``."""
    old = name_thread(name)
    try:
        yield
    finally:
        name_thread(old)


class Shed(Exception):
    """The job was dropped because the lane is behind with work a user is waiting for."""


@dataclass(order=True)
class _Job:
    deadline: float
    order: int
    kind: JobKind = field(compare=False)
    fn: Callable[[], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)
    queued_at: float = field(compare=False)


class Lane:
    """Worker threads that always take the waiting job with the earliest deadline.

    ``workers=0`` starts no threads: a test calls :meth:`run_next` to run jobs one at a time, in
    the order the lane chooses, with a fake ``clock``.
    """

    def __init__(
        self,
        name: str,
        workers: int,
        shed_after_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.clock, self.shed_after_s = name, clock, shed_after_s
        self._queue: list[_Job] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._busy = 0
        for index in range(workers):
            threading.Thread(target=self._work, name=f"vx-{name}-{index}", daemon=True).start()

    def submit(self, kind: JobKind, fn: Callable[[], T], deadline: float | None = None) -> Future[T]:
        """Queues ``fn``; its future fails with :class:`Shed` if it is shed."""
        future: Future[T] = Future()
        now = self.clock()
        with self._ready:
            if kind in SHEDDABLE and self._behind(now):
                SHED.labels(kind.value).inc()
                future.set_exception(Shed(f"{kind.value} shed: the {self.name} lane is behind"))
                return future
            job = _Job(now if deadline is None else deadline, next(self._order), kind, fn, future, now)
            heapq.heappush(self._queue, job)
            self._ready.notify()
        return future

    def lag(self) -> float:
        """Seconds by which the most overdue job a user waits for has missed its deadline (0 if none)."""
        now = self.clock()
        with self._ready:
            late = [now - job.deadline for job in self._queue if job.kind not in SHEDDABLE]
        return max([0.0, *late])

    def waiting(self) -> int:
        with self._ready:
            return len(self._queue)

    def busy(self) -> int:
        with self._ready:
            return self._busy

    def run_next(self) -> bool:
        """Runs the job due first on this thread; False if none is waiting."""
        with self._ready:
            job = self._take()
        if job is None:
            return False
        self._run(job)
        return True

    def _behind(self, now: float) -> bool:
        return any(
            job.kind not in SHEDDABLE and now - job.deadline > self.shed_after_s for job in self._queue
        )

    def _take(self) -> _Job | None:
        """Pops the earliest deadline; sheds waiting speculation first when the lane is behind."""
        now = self.clock()
        if self._behind(now):
            kept = []
            for job in self._queue:
                if job.kind not in SHEDDABLE:
                    kept.append(job)
                elif job.future.set_running_or_notify_cancel():  # a cancelled one only goes
                    SHED.labels(job.kind.value).inc()
                    job.future.set_exception(Shed(f"{job.kind.value} shed: the {self.name} lane is behind"))
            self._queue = kept
            heapq.heapify(self._queue)
        while self._queue:
            job = heapq.heappop(self._queue)
            if job.future.set_running_or_notify_cancel():
                QUEUE_WAIT.labels(job.kind.value).observe(max(0.0, now - job.queued_at))
                self._busy += 1
                return job
        return None

    def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            result = job.fn()
        except BaseException as exc:  # handed to whoever awaits the job
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
        finally:
            ran = time.perf_counter() - started
            RUN_TIME.labels(job.kind.value).observe(ran)
            BUSY.labels(self.name).inc(ran)
            with self._ready:
                self._busy -= 1
            LAG.labels(self.name).set(self.lag())

    def _work(self) -> None:
        name_thread(threading.current_thread().name)
        while True:
            with self._ready:
                job = self._take()
                while job is None:
                    self._ready.wait()
                    job = self._take()
            self._run(job)


Deadline = Callable[[], float]


async def run(lane: Lane, kind: JobKind, fn: Callable[[], T], deadline: float | None = None) -> T:
    """Runs ``fn`` on ``lane`` and awaits its result. A cancelled caller drops a job not yet started."""
    future = lane.submit(kind, fn, deadline)
    try:
        return await asyncio.wrap_future(future)
    finally:
        future.cancel()  # no effect once it runs


@dataclass
class _ChunkEnd:
    job: Future[bool]  # its result: whether the iterator is exhausted


async def iterate(
    lane: Lane,
    kind: JobKind,
    make_iterator: Callable[[], Iterator[T]],
    deadline: Deadline | None = None,
    chunk: int = 1,
    first_kind: JobKind | None = None,
) -> AsyncIterator[T]:
    """Drives a blocking iterator on ``lane``, ``chunk`` items per job, each job queued with the
    deadline ``deadline()`` gives when it is queued (default: now). The first job (``first_kind``,
    e.g. a prompt's prefill) makes one item, so the first item is not held back by the chunk.

    Items reach the caller as they are made, not when their job ends: a chunk is how long the
    stream may hold the lane, not how long its items wait (a first sentence ending on a chunk's
    second token is spoken without waiting for the other six). The next chunk is queued as soon as
    one ends, computed ahead while the caller handles the last. Closing the async iterator drops
    the next chunk if it has not started and closes the blocking iterator.
    """
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[T | _ChunkEnd] = asyncio.Queue()  # about two chunks at most, see ended()
    iterator: Iterator[T] | None = None
    lock = threading.Lock()  # jobs of one stream never overlap, even on a many-worker lane
    closing = threading.Event()  # the caller stopped: a running chunk ends after its current item

    def deliver(item: T | _ChunkEnd) -> None:  # from a worker; in order, as the loop runs callbacks
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads the stream
            loop.call_soon_threadsafe(arrive, item)

    def arrive(item: T | _ChunkEnd) -> None:
        if isinstance(item, _ChunkEnd):
            ended(item.job)
        arrived.put_nowait(item)

    def step(size: int) -> bool:
        nonlocal iterator
        with lock:
            if iterator is None:
                iterator = make_iterator()
            made = 0
            for item in iterator:
                deliver(item)
                made += 1
                if made == size or closing.is_set():
                    return False
            return True

    def queue(job_kind: JobKind = kind, size: int = chunk) -> Future[bool]:
        job = lane.submit(job_kind, lambda: step(size), deadline() if deadline else None)
        job.add_done_callback(lambda done: deliver(_ChunkEnd(done)))  # after the job's items
        return job

    def ended(job: Future[bool]) -> None:
        """A chunk ended (on the loop): the next one is queued at once, before its items are read,
        unless the caller is more than a chunk behind (then it queues it as it catches up)."""
        nonlocal pending, behind
        if not (closing.is_set() or job.cancelled() or job.exception() is not None or job.result()):
            behind = arrived.qsize() > chunk
            if not behind:
                pending = queue()

    behind = False
    pending = queue(first_kind or kind, 1)
    try:
        while True:
            item = await arrived.get()
            if behind and arrived.qsize() <= chunk:
                behind, pending = False, queue()
            if not isinstance(item, _ChunkEnd):
                yield item
            elif item.job.result():  # raises what the job raised (or Shed, or cancelled)
                return
    finally:
        closing.set()
        pending.cancel()

        def close() -> None:  # on a worker, after any running chunk: a generator's finally runs here
            with lock:
                getattr(iterator, "close", lambda: None)()

        lane.submit(kind, close)
