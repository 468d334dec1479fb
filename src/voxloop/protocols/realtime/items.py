"""Conversation items: what the client sees, tied to the engine's history messages.

An item keeps a reference to the ``ChatMessage`` the engine holds in ``session.history``: editing
its ``content`` (truncate) or removing it (delete) changes what the LLM sees next.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from voxloop.backends.llm.base import ChatMessage
from voxloop.engine.playout import Span, heard_text
from voxloop.protocols.realtime.wire import RealtimeError, new_id
from voxloop.service.limits import Lease, LimitExceeded

MAX_ITEM_TEXT = 20000
# What one session's client may make the server keep: items are text once transcribed.
MAX_ITEMS = 1000
MAX_ITEMS_CHARS = 1_000_000


@dataclass
class Item:
    type: str  # message | function_call | function_call_output
    role: str | None = None  # user | assistant | system (messages)
    id: str = field(default_factory=lambda: new_id("item"))
    status: str = "completed"
    text: str = ""
    audio: bool = False  # content is audio (with a transcript) rather than text
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""
    output: str = ""
    message: ChatMessage | None = None  # the engine's history entry, once linked
    message_id: str = ""  # its id, as the engine's events give it (the entry may come later)
    spans: list[Span] = field(default_factory=list)  # assistant audio, for truncation
    audio_s: float = 0.0
    input_audio: bytes = b""  # user audio given in conversation.item.create (pcm16)

    @property
    def current_text(self) -> str:
        """The text as the engine has it now (truncation edits the history message)."""
        return self.message.content if self.message is not None else self.text

    def render(self, beta: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type}
        if self.type == "function_call":
            body.update(status=self.status, call_id=self.call_id, name=self.name, arguments=self.arguments)
        elif self.type == "function_call_output":
            body.update(call_id=self.call_id, output=self.output)
        else:
            body.update(status=self.status, role=self.role, content=[self._content(beta)])
        return body

    def _content(self, beta: bool) -> dict[str, Any]:
        text = self.current_text
        if self.role == "user":
            if self.audio:
                return {"type": "input_audio", "transcript": text or None}
            return {"type": "input_text", "text": text}
        if self.role == "system":
            return {"type": "input_text", "text": text}
        if self.audio:
            return {"type": "audio" if beta else "output_audio", "transcript": text}
        return {"type": "text" if beta else "output_text", "text": text}

    def heard_text(self, audio_end_s: float) -> str:
        """Words spoken before ``audio_end_s`` (the engine's own reckoning of what was heard), never
        more than the item holds: a reply cut before that point keeps only what was played."""
        heard = heard_text(self.spans or [Span(0.0, self.audio_s, self.current_text)], audio_end_s)
        return heard if len(heard) < len(self.current_text) else self.current_text


def parse_item(raw: object) -> Item:
    """An item from ``conversation.item.create``; RealtimeError when it is not one we can take."""
    if not isinstance(raw, dict):
        raise RealtimeError("'item' must be an object", "invalid_type", "item")
    kind = raw.get("type", "message")
    item_id = raw.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not 0 < len(item_id) <= 64):
        raise RealtimeError("'item.id' must be a string of at most 64 characters", param="item.id")
    extra = {"id": item_id} if item_id else {}
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str) or not isinstance(output, str):
            raise RealtimeError(
                "function_call_output needs string 'call_id' and 'output'",
                "missing_required_parameter",
                "item.call_id",
            )
        return Item("function_call_output", call_id=call_id, output=output[:MAX_ITEM_TEXT], **extra)
    if kind != "message":
        raise RealtimeError(f"unsupported item type {kind!r}", param="item.type")
    role = raw.get("role")
    if role not in ("user", "assistant", "system"):
        raise RealtimeError("'item.role' must be user, assistant or system", param="item.role")
    content = raw.get("content")
    if not isinstance(content, list) or not content:
        raise RealtimeError(
            "'item.content' must be a non-empty list", "missing_required_parameter", "item.content"
        )
    texts, audio = [], b""
    for index, part in enumerate(content):
        param = f"item.content[{index}]"
        if not isinstance(part, dict):
            raise RealtimeError("content parts must be objects", "invalid_type", param)
        part_type = part.get("type")
        if part_type in ("input_text", "text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise RealtimeError("a text part needs a string 'text'", param=f"{param}.text")
            texts.append(part["text"])
        elif part_type == "input_audio" and role == "user":
            audio += _base64(part.get("audio"), f"{param}.audio")
        else:
            raise RealtimeError(
                f"unsupported content type {part_type!r} for role {role}", param=f"{param}.type"
            )
    text = " ".join(texts)
    if len(text) > MAX_ITEM_TEXT:
        raise RealtimeError(
            f"item text is too long (at most {MAX_ITEM_TEXT} characters)", param="item.content"
        )
    return Item("message", role=role, text=text, audio=bool(audio), input_audio=audio, **extra)


def _base64(value: object, param: str) -> bytes:
    if not isinstance(value, str):
        raise RealtimeError("audio must be a base64 string", "invalid_type", param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RealtimeError(f"audio is not valid base64 ({exc})", param=param) from exc


def check_room(items: dict[str, Item], item: Item) -> None:
    """Refuses ``item`` when the conversation would hold too many items or too much text."""
    if len(items) >= MAX_ITEMS:
        raise RealtimeError(
            f"the conversation holds {MAX_ITEMS} items, the most it may: delete some first",
            "conversation_full",
        )
    held = sum(len(kept.text) + len(kept.output) + len(kept.arguments) for kept in items.values())
    if held + len(item.text) + len(item.output) > MAX_ITEMS_CHARS:
        raise RealtimeError(
            f"the conversation holds {MAX_ITEMS_CHARS} characters of items, the most it may: delete some",
            "conversation_full",
        )


def charge_audio(lease: Lease | None, seconds: float) -> None:
    """Client audio sent inside an item counts against the key's audio budget like any other."""
    if lease is not None and seconds:
        try:
            lease.audio(seconds)
        except LimitExceeded as exc:
            raise RealtimeError(exc.message, "rate_limit_exceeded", "item.content") from exc
