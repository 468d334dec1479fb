"""The inference scheduler with fake jobs and a fake clock: order by deadline, shedding under load."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from voxloop.backends import scheduler
from voxloop.backends.scheduler import JobKind, Lane, Shed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_earliest_deadline_runs_first_whatever_the_arrival_order() -> None:
    clock, ran = Clock(), []
    lane = Lane("test", workers=0, clock=clock)
    for name, due in [("later", 103.0), ("now", 100.0), ("soon", 101.0)]:
        lane.submit(JobKind.TTS, lambda name=name: ran.append(name), deadline=due)
    while lane.run_next():
        pass
    assert ran == ["now", "soon", "later"]


async def test_a_waiting_users_first_token_overtakes_another_replys_later_sentences() -> None:
    """Reply A already has 3 s of audio buffered; user B has just stopped speaking. With one LLM
    worker, B's first token comes before A's next chunk."""
    clock, log = Clock(), []
    lane = Lane("llm", workers=0, clock=clock)

    def reply(name: str) -> Iterator[str]:
        for i in range(4):
            log.append(f"{name}{i}")
            yield f"{name}{i}"

    a = scheduler.iterate(lane, JobKind.LLM_DECODE, lambda: reply("A"), lambda: clock.now + 3.0, chunk=2)
    b = scheduler.iterate(
        lane, JobKind.LLM_DECODE, lambda: reply("B"), lambda: clock.now - 0.2, first_kind=JobKind.LLM_PREFILL
    )
    a_first = asyncio.ensure_future(anext(a))
    b_first = asyncio.ensure_future(anext(b))
    await asyncio.sleep(0)  # both first jobs queued
    assert lane.waiting() == 2
    lane.run_next()
    await asyncio.sleep(0)
    assert log == ["B0"]  # B is due (0.2 s late); A's audio lasts 3 s more
    assert await b_first == "B0"
    lane.run_next()  # B's next job, computed ahead with B's deadline, still comes before A
    lane.run_next()  # then A's first
    assert await a_first == "A0"
    assert log == ["B0", "B1", "A0"]
    await a.aclose()
    await b.aclose()


def test_speculation_and_partials_are_shed_when_a_waiting_user_is_late() -> None:
    clock, ran = Clock(), []
    lane = Lane("speech", workers=0, shed_after_s=0.25, clock=clock)
    partial = lane.submit(JobKind.STT_PARTIAL, lambda: ran.append("partial"), deadline=100.0)
    final = lane.submit(JobKind.STT_FINAL, lambda: ran.append("final"), deadline=100.0)
    assert lane.lag() == 0.0
    clock.now = 101.0  # the final transcript's user has waited a second: the lane is behind
    assert lane.lag() == pytest.approx(1.0)
    speculative = lane.submit(JobKind.STT_SPECULATIVE, lambda: ran.append("speculative"))
    tts = lane.submit(JobKind.TTS, lambda: ran.append("tts"))
    assert isinstance(speculative.exception(timeout=0), Shed)  # refused on arrival
    while lane.run_next():
        pass
    assert isinstance(partial.exception(timeout=0), Shed)  # dropped from the queue
    assert ran == ["final", "tts"]
    assert final.done() and tts.done()


def test_a_cancelled_job_among_those_shed_leaves_the_lane_working() -> None:
    """A dropped speculative turn cancels its queued STT; shedding it must not fail the worker."""
    clock, ran = Clock(), []
    lane = Lane("speech", workers=0, clock=clock)
    dropped = lane.submit(JobKind.STT_SPECULATIVE, lambda: ran.append("speculative"))
    lane.submit(JobKind.STT_FINAL, lambda: ran.append("final"))
    assert dropped.cancel()
    clock.now += 1.0  # behind: the queue is shed on the next take
    assert lane.run_next()
    assert ran == ["final"] and dropped.cancelled()
    assert not lane.run_next()


def test_speculation_runs_when_the_lane_keeps_up() -> None:
    clock, ran = Clock(), []
    lane = Lane("speech", workers=0, clock=clock)
    lane.submit(JobKind.TTS, lambda: ran.append("tts"), deadline=103.0)  # due later: not late
    lane.submit(JobKind.STT_SPECULATIVE, lambda: ran.append("speculative"))
    lane.submit(JobKind.STT_PARTIAL, lambda: ran.append("partial"))
    while lane.run_next():
        pass
    assert ran == ["speculative", "partial", "tts"]


async def test_run_on_worker_threads_returns_results_and_errors() -> None:
    lane = Lane("threads", workers=2)
    assert await scheduler.run(lane, JobKind.OTHER, lambda: 6 * 7) == 42
    with pytest.raises(ZeroDivisionError):
        await scheduler.run(lane, JobKind.OTHER, lambda: 1 / 0)
    pieces = [piece async for piece in scheduler.iterate(lane, JobKind.TTS, lambda: iter(range(5)), chunk=2)]
    assert pieces == [0, 1, 2, 3, 4]


async def test_closing_a_stream_closes_its_iterator_on_the_lane() -> None:
    lane = Lane("threads", workers=1)
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            loop.call_soon_threadsafe(closed.set)

    stream = scheduler.iterate(lane, JobKind.LLM_DECODE, endless, chunk=4)
    assert [await anext(stream) for _ in range(3)] == [1, 2, 3]
    await stream.aclose()
    await asyncio.wait_for(closed.wait(), 10)


async def test_items_reach_the_caller_as_they_are_made_not_when_their_chunk_ends() -> None:
    """A reply's first sentence may end on the second token of an 8-token chunk: it must not wait
    for the other six before it is spoken."""
    lane = Lane("threads", workers=1)
    go_on = threading.Event()

    def tokens() -> Iterator[str]:
        yield "first"  # the prefill job's one item
        yield "second"  # the first of a chunk of four
        go_on.wait(30)  # the chunk is still running
        yield "third"

    stream = scheduler.iterate(lane, JobKind.LLM_DECODE, tokens, chunk=4, first_kind=JobKind.LLM_PREFILL)
    assert await anext(stream) == "first"
    try:
        assert await asyncio.wait_for(anext(stream), 10) == "second"
    finally:
        go_on.set()
    assert [item async for item in stream] == ["third"]


async def test_a_caller_that_stops_reading_holds_its_producer_within_two_chunks() -> None:
    lane = Lane("threads", workers=1)
    made = 0

    def counter() -> Iterator[int]:
        nonlocal made
        while True:
            made += 1
            yield made

    stream = scheduler.iterate(lane, JobKind.LLM_DECODE, counter, chunk=2)
    assert await anext(stream) == 1
    deadline, idle_polls = time.monotonic() + 10, 0
    while idle_polls < 2:  # idle on two polls: a chunk's end handled between them queued nothing
        idle_polls = idle_polls + 1 if made >= 3 and lane.waiting() == 0 and lane.busy() == 0 else 0
        assert time.monotonic() < deadline, f"the lane never went idle ({made} made)"
        await asyncio.sleep(0.01)
    assert made <= 1 + 2 * 2
    assert [await anext(stream) for _ in range(10)] == list(range(2, 12))  # and it goes on when read
    await stream.aclose()
