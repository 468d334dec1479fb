"""Wire details shared by the Realtime modules: ids, the two dialects' event names, errors.

Two dialects: GA (``openai`` SDK ``client.realtime``; ``response.output_audio.delta``...) and beta
(header ``OpenAI-Beta: realtime=v1``, subprotocol ``openai-beta.realtime-v1`` or a beta-shaped
``session.update``; ``response.audio.delta``...). Events are built with GA names and renamed here.
"""

from __future__ import annotations

import secrets
from typing import Any

GA_TO_BETA = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
GA_ONLY = frozenset({"conversation.item.added", "conversation.item.done"})
BETA_ONLY = frozenset({"conversation.item.created"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def rename(event: dict[str, Any], beta: bool) -> dict[str, Any] | None:
    """The event as the connection's dialect names it, or None where that dialect has no such event."""
    kind = event["type"]
    if beta:
        if kind in GA_ONLY:
            return None
        event["type"] = GA_TO_BETA.get(kind, kind)
    elif kind in BETA_ONLY:
        return None
    return event


class RealtimeError(Exception):
    """A client mistake, sent back as an ``error`` event; the session goes on."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def error_event(
    message: str,
    code: str | None = None,
    kind: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id},
    }
