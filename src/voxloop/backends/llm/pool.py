"""Several OpenAI-compatible model servers (llama.cpp ``llama-server``, vLLM, ...) as one language
model: the least-loaded healthy server answers, and one that refuses or dies mid-reply is replaced
by another without the user hearing anything twice.

Configured as a comma-separated ``VOXLOOP_LLM_BASE_URL``. The servers must serve the same model:
a pool is replicas, not a choice of models.

- Health: a background task asks every server ``GET /models`` every ``llm_health_interval_s``;
  a request that fails marks its server down at once, and the probe brings it back. No reply ever
  waits for a probe.
- Load: the replies this node has in flight on each server. Each node counts only its own, which
  is enough: nodes that each spread evenly spread evenly in sum, without a shared counter.
- Failover mid-reply, two ways, by what the replacement server is (its ``GET /models`` says):
  - llama.cpp's ``llama-server`` and vLLM continue a trailing assistant message ("prefill";
    vLLM wants ``continue_final_message``): they are asked to go on from the text already said,
    which costs one prompt evaluation.
  - Any other server is asked the same request again, with the same seed, and the text the user
    already has is skipped once the new stream has reproduced it character for character. The
    OpenAI API has no prefill: llama-cpp-python's server and hosted APIs read a trailing assistant
    message as a finished turn and start a new answer, which the user would hear twice. The
    replay is checked: the same model with the same seed writes the same tokens only while its
    logits are bit for bit the same, and a server whose prompt cache differs can sample another
    word (measured: bench/bench_llm_pool.py). A replay that differs from what was said ends the
    reply with an error rather than splice two answers together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge

from voxloop.backends.llm.base import (
    ChatMessage,
    LlmError,
    LlmEvent,
    ReasoningDelta,
    TextDelta,
    ToolSpec,
    Usage,
)
from voxloop.backends.llm.openai_http import LlmRefused, OpenAiLlm
from voxloop.config import Settings

log = logging.getLogger(__name__)

PREFILL_SERVERS = {"llamacpp", "vllm"}  # their GET /models "owned_by"

SERVER_UP = Gauge("voxloop_llm_server_up", "1 while a pool's LLM server is taken as healthy", ["server"])
IN_FLIGHT = Gauge(
    "voxloop_llm_server_replies", "Replies this node has in flight on an LLM server", ["server"]
)
FAILOVERS = Counter(
    "voxloop_llm_failovers_total",
    "Replies moved to another LLM server: before any text (retry), or continued (prefill, replay)",
    ["how"],
)


class Diverged(LlmError):
    """The replacement server's reply differs from the text already streamed."""


@dataclass(eq=False)
class Endpoint:
    llm: OpenAiLlm
    in_flight: int = 0
    healthy: bool = True
    prefill: bool = False  # continues a trailing assistant message (llama-server, vLLM)
    failed_at: float = 0.0  # monotonic time of its last failed request
    replies: int = 0  # streams it finished

    @property
    def url(self) -> str:
        return self.llm.base_url

    @property
    def label(self) -> str:
        """host:port, never credentials a URL may carry."""
        return urlsplit(self.url).netloc.rpartition("@")[2]

    def mark(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.info("LLM server %s is %s", self.url, "up" if healthy else "down")
        self.healthy = healthy
        SERVER_UP.labels(self.label).set(int(healthy))


class Replay:
    """Drops from a restarted stream the text (and reasoning) the caller already has."""

    def __init__(self, text: str, reasoning: str) -> None:
        self.left = {TextDelta: text, ReasoningDelta: reasoning}

    def fresh(self, event: LlmEvent) -> LlmEvent | None:
        if isinstance(event, Usage) and any(self.left.values()):
            raise Diverged("the replacement LLM server's reply ended before the text already said")
        if not isinstance(event, (TextDelta, ReasoningDelta)) or not self.left[type(event)]:
            return event
        left = self.left[type(event)]
        overlap = min(len(left), len(event.text))
        if event.text[:overlap] != left[:overlap]:
            raise Diverged("the replacement LLM server's reply differs from the text already said")
        self.left[type(event)] = left[overlap:]
        rest = event.text[overlap:]
        return type(event)(rest) if rest else None


class LlmPool:
    def __init__(self, settings: Settings, urls: list[str]) -> None:
        self.name = f"openai-pool:{settings.llm_remote_model}"
        self.accepts_images = settings.llm_vision
        self.endpoints = [Endpoint(OpenAiLlm(settings, url)) for url in urls]
        self.interval_s = settings.llm_health_interval_s
        self._rotation = itertools.count()
        self._checker: asyncio.Task[None] | None = None

    def choose(self, tried: list[Endpoint]) -> Endpoint | None:
        """Healthy before down (a stale mark must not leave a reply unanswered), then the fewest
        replies in flight; a rotating start shares ties among idle servers."""
        start, count = next(self._rotation), len(self.endpoints)
        order = {endpoint: (i - start) % count for i, endpoint in enumerate(self.endpoints)}
        untried = [endpoint for endpoint in self.endpoints if endpoint not in tried]
        return min(untried, key=lambda e: (not e.healthy, e.in_flight, order[e]), default=None)

    async def stream(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[LlmEvent]:
        self.start_checks()
        seed = random.getrandbits(31) if seed is None else seed  # one per reply: a replay must match
        said = {TextDelta: "", ReasoningDelta: ""}
        tried: list[Endpoint] = []
        errors: list[str] = []
        while (endpoint := self.choose(tried)) is not None:
            tried.append(endpoint)
            asked, extra = messages, None
            if said[TextDelta] and not said[ReasoningDelta] and endpoint.prefill:
                asked = [*messages, ChatMessage("assistant", said[TextDelta])]
                extra = {"continue_final_message": True, "add_generation_prompt": False}
                replay = Replay("", "")  # all it writes is new
            else:
                replay = Replay(said[TextDelta], said[ReasoningDelta])
            if errors:
                FAILOVERS.labels("prefill" if extra else "replay" if any(said.values()) else "retry").inc()
            endpoint.in_flight += 1
            IN_FLIGHT.labels(endpoint.label).inc()
            events = endpoint.llm.stream(asked, tools, max_tokens, temperature, seed, extra)
            try:
                async with aclosing(events):
                    async for event in events:
                        if (fresh := replay.fresh(event)) is None:
                            continue
                        if isinstance(fresh, (TextDelta, ReasoningDelta)):
                            said[type(fresh)] += fresh.text
                        yield fresh
                endpoint.replies += 1
                return
            except (LlmRefused, Diverged):
                raise  # the request itself, or a reply that cannot be continued: no server helps
            except LlmError as exc:
                endpoint.mark(False)
                endpoint.failed_at = time.monotonic()
                errors.append(str(exc))
                log.warning("LLM server %s failed (%s); trying another", endpoint.url, exc)
            finally:
                endpoint.in_flight -= 1
                IN_FLIGHT.labels(endpoint.label).dec()
        raise LlmError(f"no LLM server of the pool could answer: {'; '.join(errors)}")

    def start_checks(self) -> None:
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_forever())

    async def check(self) -> None:
        """Asks every server once, at the same time, and marks it up or down."""
        timeout_s, started = min(2.0, self.interval_s), time.monotonic()
        answers = await asyncio.gather(*(e.llm.probe(timeout_s) for e in self.endpoints))
        for endpoint, served_by in zip(self.endpoints, answers, strict=True):
            if endpoint.failed_at > started:
                continue  # a reply failed there while it was asked: the next probe decides
            endpoint.mark(served_by is not None)
            endpoint.prefill = served_by in PREFILL_SERVERS

    async def _check_forever(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for endpoint in self.endpoints:
            await endpoint.llm.aclose()
