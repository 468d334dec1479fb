"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, hosted APIs) as the language model."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from voxloop.backends.llm.base import (
    ChatMessage,
    LlmError,
    LlmEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    finish_reason_of,
)
from voxloop.config import Settings


def openai_tools(tools: list[ToolSpec] | None) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools or ()
    ]


def openai_messages(messages: list[ChatMessage], arguments_as_json: bool = True) -> list[dict[str, Any]]:
    """Messages in OpenAI's wire shape.

    The API wants tool-call arguments as a JSON string; chat templates (``arguments | tojson``) want
    the object itself, hence ``arguments_as_json``.
    """
    rendered: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            item["content"] = [
                {"type": "text", "text": message.content},
                *({"type": "image_url", "image_url": {"url": url}} for url in message.images),
            ]
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(call.arguments) if arguments_as_json else call.arguments,
                    },
                }
                for call in message.tool_calls
            ]
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id or ""
        rendered.append(item)
    return rendered


class LlmRefused(LlmError):
    """The server refused the request itself (HTTP 4xx other than 408/429): another server would too."""


class OpenAiLlm:
    """Streams ``/chat/completions`` (server-sent events) from an OpenAI-compatible server."""

    def __init__(self, settings: Settings, base_url: str | None = None) -> None:
        self.name = f"openai:{settings.llm_remote_model}"
        self.accepts_images = settings.llm_vision
        self.base_url = (base_url or settings.llm_base_url).rstrip("/")
        self._settings = settings
        self._url = self.base_url + "/chat/completions"
        headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        # One timeout for connecting and for the gap between two chunks of the stream.
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(settings.llm_timeout_s))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def probe(self, timeout_s: float) -> str | None:
        """None if the server does not answer ``GET /models`` (every OpenAI-compatible server has
        it), else who serves the model, its ``owned_by`` ("llamacpp", "vllm", ...; "" if unsaid)."""
        try:
            response = await self._client.get(self.base_url + "/models", timeout=timeout_s)
            models = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(models, list):
            return None
        first = models[0] if models and isinstance(models[0], dict) else {}
        return str(first.get("owned_by") or "")

    async def stream(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> AsyncIterator[LlmEvent]:
        body: dict[str, Any] = {
            "model": self._settings.llm_remote_model,
            "messages": openai_messages(messages),
            "stream": True,
            "max_tokens": max_tokens or self._settings.llm_max_tokens,
            "temperature": self._settings.llm_temperature if temperature is None else temperature,
        }
        if tools:
            body["tools"] = openai_tools(tools)
        if seed is not None:
            body["seed"] = seed
        body |= extra or {}
        try:
            async with self._client.stream("POST", self._url, json=body) as response:
                if response.status_code >= 400:
                    own_fault = response.status_code < 500 and response.status_code not in (408, 429)
                    raise (LlmRefused if own_fault else LlmError)(
                        f"LLM server {self._url} answered HTTP {response.status_code}: "
                        f"{await _error_detail(response)}"
                    )
                async for event in _parse_stream(response.aiter_lines()):
                    yield event
        except httpx.TimeoutException as exc:
            raise LlmError(
                f"LLM server {self._url} sent nothing for {self._settings.llm_timeout_s:g} s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.ConnectError as exc:
            raise LlmError(f"cannot connect to LLM server {self._url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LlmError(f"LLM stream from {self._url} broke off: {exc!r}") from exc


async def _error_detail(response: httpx.Response, limit: int = 500) -> str:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return body[:limit].decode(errors="replace").strip() or response.reason_phrase


async def _parse_stream(lines: AsyncIterator[str]) -> AsyncIterator[LlmEvent]:
    """Text deltas as they arrive; tool calls (streamed in index-keyed pieces) once the stream ends."""
    calls: dict[int, dict[str, str]] = {}
    saw_data = finished = False
    reason, usage, pieces = None, {}, 0  # usage: servers that send it (stream_options, llama.cpp)
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, `event:` and `:` keep-alive comments
        payload = line[5:].strip()
        saw_data = True
        if payload == "[DONE]":
            finished = True
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise LlmError(f"malformed event in LLM stream: {payload[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise LlmError(f"malformed event in LLM stream: {payload[:200]!r}")
        if chunk.get("error"):
            raise LlmError(f"LLM server reported an error mid-stream: {chunk['error']}")
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                yield ReasoningDelta(reasoning)
            if delta.get("content"):
                pieces += 1
                yield TextDelta(delta["content"])
            for part in delta.get("tool_calls") or ():
                slot = calls.setdefault(part.get("index", 0), {"id": "", "name": "", "arguments": ""})
                function = part.get("function") or {}
                slot["id"] = part.get("id") or slot["id"]
                slot["name"] = function.get("name") or slot["name"]
                slot["arguments"] += function.get("arguments") or ""
            reason = choice.get("finish_reason") or reason
            finished = finished or bool(reason)
    if not finished:
        if not saw_data:
            raise LlmError("LLM server sent no server-sent events (does it support stream=true?)")
        raise LlmError("LLM stream ended before the answer was complete")
    for index in sorted(calls):
        yield _tool_call(calls[index])
    count = lambda key, default: usage[key] if isinstance(usage.get(key), int) else default  # noqa: E731
    # Without the server's usage, each streamed piece is about one token and the prompt unknown (0).
    yield Usage(finish_reason_of(reason), count("prompt_tokens", 0), count("completion_tokens", pieces))


def _tool_call(slot: dict[str, str]) -> ToolCall:
    try:
        arguments = json.loads(slot["arguments"] or "{}")
    except json.JSONDecodeError as exc:
        raise LlmError(
            f"tool call {slot['name']!r} has malformed arguments {slot['arguments'][:200]!r}"
        ) from exc
    if not slot["name"] or not isinstance(arguments, dict):
        raise LlmError(f"malformed tool call in LLM stream: {slot}")
    return ToolCall(id=slot["id"] or f"call_{uuid.uuid4().hex}", name=slot["name"], arguments=arguments)
