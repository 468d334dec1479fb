"""The canonical events a session emits. Protocol modules translate these to their wire format.

Every event that belongs to a reply carries its ``generation`` (the reply id); the session drops
those of an older generation once a newer one has started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["listening", "thinking", "speaking", "interrupted"]


@dataclass(frozen=True)
class StatusChanged:
    status: Status
    generation: int


@dataclass(frozen=True)
class SpeechStarted:
    """The user started talking (VAD), in session-clock seconds."""

    at: float


@dataclass(frozen=True)
class SpeechStopped:
    at: float


@dataclass(frozen=True)
class TranscriptPartial:
    """What the user has said so far in the utterance under way (only with ``partials`` on)."""

    text: str
    confidence: float = 1.0


@dataclass(frozen=True)
class TranscriptFinal:
    role: Literal["user", "assistant"]
    text: str
    generation: int
    interrupted: bool = False  # assistant only: the text is what was actually played
    language: str = ""  # the language the user spoke (user) or the reply is in (assistant)
    # The history message holding the text (History.find / truncate / delete); "" when none.
    message_id: str = field(default="", compare=False)


@dataclass(frozen=True)
class TextDelta:
    """Reply text as it is written by the LLM (for protocols that stream text)."""

    text: str
    generation: int


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning text from models that think aloud before answering; never spoken."""

    text: str
    generation: int


@dataclass(frozen=True)
class AudioOut:
    """Reply audio: a frame of ``frame_ms``, or with ``frame_ms`` None a whole spoken piece."""

    pcm: bytes  # S16LE mono at the session's output rate
    generation: int
    text: str = ""  # the text of the piece this audio belongs to
    piece: int = 0  # index of that piece within the reply
    piece_s: float = 0.0  # the whole piece's duration (its frames come one by one)


@dataclass(frozen=True)
class Visemes:
    visemes: list[dict[str, Any]]
    generation: int


@dataclass(frozen=True)
class ToolCallRequested:
    """A client-side tool the client must run and answer with submit_tool_result(call_id)."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    generation: int


@dataclass(frozen=True)
class ToolStarted:
    """Any tool call the reply makes (server- or client-side), as it starts."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    generation: int


@dataclass(frozen=True)
class ToolFinished:
    call_id: str
    name: str
    result: str
    generation: int


@dataclass(frozen=True)
class Interrupted:
    """A reply was cut: by the user's words ("barge_in"), the client ("client") or a new input
    ("new_input"). Followed by StatusChanged("interrupted") and ResponseDone."""

    generation: int
    reason: str


@dataclass(frozen=True)
class ResponseDone:
    generation: int
    text: str  # what the user heard
    interrupted: bool


@dataclass(frozen=True)
class LlmUsage:
    """One LLM request of a reply finished (a reply with tool calls makes several)."""

    finish_reason: str  # "stop", "length", "tool-calls", ...
    input_tokens: int
    output_tokens: int
    generation: int


@dataclass(frozen=True)
class TurnMetrics:
    """Per-turn latencies in seconds, measured from the end of the user's speech."""

    generation: int
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Error:
    message: str
    code: str = "server_error"
    generation: int | None = None


Event = (
    StatusChanged
    | SpeechStarted
    | SpeechStopped
    | TranscriptPartial
    | TranscriptFinal
    | TextDelta
    | ReasoningDelta
    | AudioOut
    | Visemes
    | ToolCallRequested
    | ToolStarted
    | ToolFinished
    | Interrupted
    | ResponseDone
    | TurnMetrics
    | LlmUsage
    | Error
)
