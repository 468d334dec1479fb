"""Where blocking inference runs, so the event loop never waits on a model.

Two lanes on a 2-core machine: ``speech`` (STT, TTS: short, urgent jobs that decide when the user
hears something) and ``llm`` (long token streams, one at a time). Keeping the LLM on its own
single worker means a long generation can never occupy every thread that speech needs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

SPEECH = ThreadPoolExecutor(max_workers=2, thread_name_prefix="voxloop-speech")
LLM = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxloop-llm")

_DONE = object()


async def run_in(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def iterate_in(
    executor: ThreadPoolExecutor, make_iterator: Callable[[], Iterator[T]], buffer: int = 4
) -> AsyncIterator[T]:
    """Drive a blocking iterator on ``executor`` and yield its items on the loop.

    At most ``buffer`` items wait in the queue (the producer blocks beyond that). Closing the
    async iterator early tells the producer to stop after its current item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=buffer)
    stop = threading.Event()

    def put(item: object) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                future.result(timeout=0.1)
                return
            except TimeoutError:
                continue
        future.cancel()

    def produce() -> None:
        try:
            for item in make_iterator():
                if stop.is_set():
                    return
                put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(_DONE)

    producer = loop.run_in_executor(executor, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # The producer notices `stop` within 0.1 s or after its current item; not awaited, so
        # an interrupted consumer is released at once.
        del producer
