"""The pool of OpenAI-compatible LLM servers: least-loaded choice, health checks and failover,
first against scripted fake servers, then with two real llama.cpp servers, one killed mid-reply."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.server import free_port
from voxloop.backends.llm.base import ChatMessage, LlmError, LlmEvent, TextDelta, Usage
from voxloop.backends.llm.factory import create_llm
from voxloop.backends.llm.openai_http import OpenAiLlm
from voxloop.backends.llm.pool import LlmPool
from voxloop.config import Settings
from voxloop.models import QWEN_05B

ASK = [ChatMessage("user", "Hi")]
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(data: object) -> bytes:
    return chunk(b"data: " + json.dumps(data).encode() + b"\n\n")


def delta(text: str) -> bytes:
    return sse({"choices": [{"delta": {"content": text}}]})


DONE = sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + chunk(b"data: [DONE]\n\n") + chunk(b"")

Reply = Callable[[asyncio.StreamWriter], Awaitable[None]]


def status(code: int) -> Reply:
    async def reply(writer: asyncio.StreamWriter) -> None:
        body = b'{"error": {"message": "busy"}}'
        writer.write(b"HTTP/1.1 %d Nope\r\nContent-Length: %d\r\n\r\n%s" % (code, len(body), body))

    return reply


def streams(*pieces: str, dies: bool = False, gate: asyncio.Event | None = None) -> Reply:
    """Streams ``pieces``; waits for ``gate`` after the first; ``dies``: the connection drops after them."""

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for i, piece in enumerate(pieces):
            writer.write(delta(piece))
            await writer.drain()
            if i == 0 and gate is not None:
                await gate.wait()
        if dies:
            raise ConnectionResetError("the server died")  # the connection drops
        writer.write(DONE)

    return reply


@dataclass
class FakeServer:
    """An OpenAI-compatible server that answers each chat request with the next scripted reply."""

    replies: list[Reply]
    healthy: bool = True
    owned_by: str = "me"  # llama-cpp-python's server says "me"; llama-server "llamacpp"
    requests: list[dict] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def start(self) -> FakeServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: httpx reuses connections
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                if head.startswith(b"GET /v1/models") and self.healthy:
                    models = json.dumps({"data": [{"id": "m", "owned_by": self.owned_by}]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(models), models))
                elif head.startswith(b"GET /v1/models"):
                    await status(503)(writer)
                else:
                    self.requests.append(json.loads(body))
                    await (self.replies.pop(0) if self.replies else status(500))(writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, the reply dropped the connection, or the test is over
        finally:
            writer.close()


async def fakes(*scripts: list[Reply]) -> list[FakeServer]:
    return [await FakeServer(list(script)).start() for script in scripts]


def pool_of(*urls: str, interval_s: float = 30, timeout_s: float = 2) -> LlmPool:
    settings = Settings(llm_backend="openai", llm_base_url=",".join(urls), llm_timeout_s=timeout_s)
    llm = create_llm(settings.model_copy(update={"llm_health_interval_s": interval_s}))
    assert isinstance(llm, LlmPool)
    return llm


async def collect(events: AsyncIterator[LlmEvent]) -> list[LlmEvent]:
    return [event async for event in events]


def text_of(events: list[LlmEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


async def test_one_url_stays_a_plain_client_and_a_list_is_a_pool() -> None:
    assert isinstance(create_llm(Settings(llm_backend="openai", llm_base_url="http://a/v1")), OpenAiLlm)
    pool = pool_of("http://a/v1", " http://b/v1 ")
    assert [e.url for e in pool.endpoints] == ["http://a/v1", "http://b/v1"]
    await pool.aclose()


async def test_least_loaded_server_takes_the_next_reply() -> None:
    gate = asyncio.Event()
    a, b = await fakes([streams("One", " two.", gate=gate)] * 2, [streams("One", " two.", gate=gate)] * 2)
    pool = pool_of(a.url, b.url)
    first = pool.stream(ASK)
    await anext(first)  # one reply in flight on one server
    busy = next(e for e in pool.endpoints if e.in_flight)
    second = pool.stream(ASK)
    await anext(second)
    assert [e.in_flight for e in pool.endpoints] == [1, 1], "the second reply went to the busy server"
    gate.set()
    assert text_of([TextDelta("One"), *await collect(first)]) == "One two."
    assert text_of([TextDelta("One"), *await collect(second)]) == "One two."
    assert busy.replies == 1 and len(a.requests) == len(b.requests) == 1
    await pool.aclose()


async def test_health_checks_take_a_server_out_and_back() -> None:
    a, b = await fakes([streams("From a.")] * 5, [streams("From b.")] * 5)
    pool = pool_of(a.url, b.url, interval_s=0.1)
    a.healthy = False  # its /models answers 503
    pool.start_checks()
    await wait_until(lambda: not pool.endpoints[0].healthy)
    for _ in range(3):
        assert text_of(await collect(pool.stream(ASK))) == "From b."
    assert not a.requests
    a.healthy = True
    await wait_until(lambda: pool.endpoints[0].healthy)
    texts = {text_of(await collect(pool.stream(ASK))) for _ in range(2)}
    assert texts == {"From a.", "From b."}, "an idle server back up gets its share"
    await pool.aclose()


@pytest.mark.parametrize("refusal", [status(503), status(500), status(429), "closed port"])
async def test_refusal_fails_over_before_anything_was_said(refusal: Reply | str) -> None:
    (b,) = await fakes([streams("Hello", " there.")])
    if refusal == "closed port":
        dead = f"http://127.0.0.1:{free_port()}/v1"
    else:
        (a,) = await fakes([refusal])
        dead = a.url
    pool = pool_of(dead, b.url)  # both idle: the first in the list is asked first
    events = await collect(pool.stream(ASK))
    assert text_of(events) == "Hello there." and isinstance(events[-1], Usage)
    assert not pool.endpoints[0].healthy and pool.endpoints[1].healthy
    await pool.aclose()


def failovers(how: str) -> float:
    return REGISTRY.get_sample_value("voxloop_llm_failovers_total", {"how": how}) or 0.0


async def test_death_mid_reply_continues_without_repeating() -> None:
    # The replacement streams the same answer cut differently; the user gets each character once.
    a, b = await fakes(
        [streams("The sea", " is wide", dies=True)], [streams("The", " sea is", " wide and", " deep.")]
    )
    pool = pool_of(a.url, b.url)
    pool.endpoints.sort(key=lambda e: e.url != a.url)
    replays = failovers("replay")
    events = await collect(pool.stream(ASK, temperature=0.7))
    assert failovers("replay") == replays + 1, "exported at /metrics"
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert texts == ["The sea", " is wide", " and", " deep."], texts
    assert isinstance(events[-1], Usage) and events[-1].finish_reason == "stop"
    # The same seed and sampling on both servers: that is what makes the replay exact.
    assert a.requests[0]["seed"] == b.requests[0]["seed"] and b.requests[0]["temperature"] == 0.7
    assert not pool.endpoints[0].healthy and pool.endpoints[1].replies == 1
    await pool.aclose()


async def test_death_mid_reply_continues_from_the_text_said_where_the_server_can() -> None:
    # llama-server and vLLM continue a trailing assistant message: asked to, they write only what follows.
    a, b = await fakes([streams("The sea", " is wide", dies=True)], [streams(" and", " deep.")])
    b.owned_by = "llamacpp"
    pool = pool_of(a.url, b.url)
    pool.endpoints.sort(key=lambda e: e.url != a.url)
    await pool.check()
    assert [e.prefill for e in pool.endpoints] == [False, True]
    events = await collect(pool.stream(ASK))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["The sea", " is wide", " and", " deep."]
    continued = b.requests[0]
    assert continued["messages"][-1] == {"role": "assistant", "content": "The sea is wide"}
    assert continued["continue_final_message"] is True and continued["add_generation_prompt"] is False
    assert "continue_final_message" not in a.requests[0]
    await pool.aclose()


@pytest.mark.parametrize("replacement", [streams("The sky is blue."), streams("The")])
async def test_replacement_that_differs_ends_the_reply(replacement: Reply) -> None:
    a, b = await fakes([streams("The sea", " is wide", dies=True)], [replacement])
    pool = pool_of(a.url, b.url)
    pool.endpoints.sort(key=lambda e: e.url != a.url)
    said: list[str] = []
    with pytest.raises(LlmError, match="replacement LLM server's reply"):
        async for event in pool.stream(ASK):
            said.append(event.text if isinstance(event, TextDelta) else "")
    assert "".join(said) == "The sea is wide", "nothing spliced on"
    await pool.aclose()


async def test_own_fault_is_not_retried_and_all_down_is_one_clear_error() -> None:
    a, b = await fakes([status(400)], [streams("never")])
    pool = pool_of(a.url, b.url)
    pool.endpoints.sort(key=lambda e: e.url != a.url)
    with pytest.raises(LlmError, match="HTTP 400"):
        await collect(pool.stream(ASK))
    assert not b.requests, "a request the server refuses as malformed would fail everywhere"
    await pool.aclose()
    a, b = await fakes([status(503)], [status(502)])
    pool = pool_of(a.url, b.url)
    with pytest.raises(LlmError, match=r"no LLM server of the pool could answer.*HTTP 50.*HTTP 50"):
        await collect(pool.stream(ASK))
    await pool.aclose()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- two real llama.cpp servers -------------------------------------------------------------------


@dataclass
class LlamaServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    prefill: bool = False  # continues a trailing assistant message (llama-server does)


def start_llama_cpp_server(log: Path) -> LlamaServer:
    """llama.cpp's own llama-server (tests/llama_server_peer.py): two slots, assistant prefill."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).with_name("llama_server_peer.py")), str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    return LlamaServer(process, f"http://127.0.0.1:{port}/v1", log, prefill=True)


def start_llama_server(log: Path, threads: int = 1) -> LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on the embedded 0.5B model (also for bench/)."""
    port = free_port()
    model = QWEN_05B.assemble(Settings().cache_dir)
    command = [sys.executable, str(Path(__file__).with_name("llama_peer.py")), "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"]
    command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    # By default llama-cpp-python's server ends a running stream, as if complete, when any other
    # request arrives, a health probe included; llama.cpp's own llama-server never does.
    command += ["--interrupt_requests", "False"]
    with log.open("wb") as sink:  # a file, not a pipe: llama.cpp's load log would fill a pipe
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    return LlamaServer(process, f"http://127.0.0.1:{port}/v1", log)


def wait_ready(server: LlamaServer, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.process.poll() is None, server.log.read_text(errors="replace")[-2000:]
        try:
            if httpx.get(f"{server.url}/models", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"llama_cpp.server did not start within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture(params=["llama-cpp-python", "llama-server"])
def llama_servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[LlamaServer]]:
    start = start_llama_server if request.param == "llama-cpp-python" else start_llama_cpp_server
    servers = [start(tmp_path / f"llama-{i}.log") for i in range(2)]
    try:
        for server in servers:
            wait_ready(server)
        yield servers
    finally:
        for server in servers:
            server.process.kill()
            server.process.wait(timeout=10)


async def test_real_server_killed_mid_reply_the_other_finishes_it(llama_servers: list[LlamaServer]) -> None:
    """llama-cpp-python's server: a seeded replay; llama-server: a continuation (prefill)."""
    pool = pool_of(*(server.url for server in llama_servers), timeout_s=30)
    await pool.check()  # what each server is (a reply never waits for this)
    ask = [
        ChatMessage("system", "You are a helpful assistant."),
        ChatMessage("user", "Count from 1 to 20, separated by commas."),
    ]
    said, killed = [], None
    # Greedy: a server's cached prompt can shift its logits a little, and a sampled reply with it.
    async for event in pool.stream(ask, max_tokens=100, temperature=0.0):
        if isinstance(event, TextDelta):
            said.append(event.text)
        if len(said) == 8 and killed is None:  # mid-reply: about "1, 2, 3,"
            killed = next(i for i, e in enumerate(pool.endpoints) if e.in_flight)
            llama_servers[killed].process.send_signal(signal.SIGKILL)
    await pool.aclose()
    assert killed is not None, said
    survivor = pool.endpoints[1 - killed]
    assert not pool.endpoints[killed].healthy and survivor.replies == 1
    assert survivor.prefill is llama_servers[1 - killed].prefill, "told apart by its GET /models"
    numbers = [int(n) for n in re.findall(r"\d+", "".join(said))]
    assert numbers == list(range(1, 21)), f"each number once, in order: {''.join(said)!r}"
