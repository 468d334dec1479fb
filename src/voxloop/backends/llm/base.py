"""Language model interface: streamed chat completions with tool calls."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    images: list[str] = field(default_factory=list)  # data URLs, for models that accept images
    # The history's handle on the message (truncate, delete); never sent to a model.
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16], compare=False)


@dataclass
class TextDelta:
    text: str


@dataclass
class ReasoningDelta:
    """Thinking text of reasoning models (``reasoning_content``): shown, never spoken."""

    text: str


@dataclass
class Usage:
    """The last event of a stream: why it stopped ("stop", "length", "tool-calls") and its tokens."""

    finish_reason: str
    input_tokens: int
    output_tokens: int


LlmEvent = TextDelta | ReasoningDelta | ToolCall | Usage


def finish_reason_of(openai_reason: str | None) -> str:
    """OpenAI's finish_reason in the AI SDK's words (what VoiceAgent clients read)."""
    return {"length": "length", "tool_calls": "tool-calls", "content_filter": "content-filter"}.get(
        openai_reason or "stop", "stop"
    )


class LlmError(RuntimeError):
    """The model backend failed: unreachable, timed out, or broke off mid-stream."""


class LanguageModel(Protocol):
    name: str
    accepts_images: bool  # whether ChatMessage.images reach the model

    def stream(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[LlmEvent]:
        """Yields text deltas as they come and tool calls once complete; raises LlmError.

        Closing the iterator early (``aclose``) stops generation promptly.
        """
        ...
