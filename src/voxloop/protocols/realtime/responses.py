"""Engine events -> Realtime server events: responses, their output items, deltas and ``response.done``.

One Realtime response per engine generation, except around a client tool call: the response that
asks for the call ends with it (``response.done``), and the engine's reply continues under a new
response once the client has sent the ``function_call_output`` and ``response.create``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from voxloop.audio.codec import alaw_encode, ulaw_encode
from voxloop.protocols.realtime.config import RealtimeConfig
from voxloop.protocols.realtime.items import Item, Span
from voxloop.protocols.realtime.wire import new_id

Send = Callable[[dict[str, Any]], Awaitable[None]]
# Usage is estimated (the embedded models do not bill): ~4 characters per text token, and the
# audio token rates OpenAI documents (10 per second of input, 20 per second of output).
CHARS_PER_TOKEN = 4
AUDIO_IN_TOKENS_S, AUDIO_OUT_TOKENS_S = 10, 20
CANCEL_REASONS = {"barge_in": "turn_detected", "new_input": "turn_detected", "client": "client_cancelled"}
RATE_LIMITS = [
    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60.0},
    {"name": "tokens", "limit": 1000000, "remaining": 1000000, "reset_seconds": 60.0},
]


@dataclass
class ResponseState:
    """One Realtime response: the ``tag`` of the engine reply it shows (see module docstring)."""

    audio_out: bool
    output_format: str
    id: str = field(default_factory=lambda: new_id("resp"))
    output: list[Item] = field(default_factory=list)
    message: Item | None = None  # the assistant message being spoken
    cancel_reason: str | None = None
    input_tokens: int = 0
    transcript: str = ""
    piece: int = -1  # the reply piece the last audio belonged to
    finished: bool = False  # response.done was sent: later events of its reply are not shown


class ResponseWriter:
    """Turns one engine generation's events into the Realtime response events, in the documented order."""

    def __init__(self, send: Send, items: dict[str, Item], beta: Callable[[], bool]) -> None:
        self.send, self.items, self.beta = send, items, beta
        self.current: ResponseState | None = None

    def render(self, item: Item) -> dict[str, Any]:
        return item.render(self.beta())

    async def create(self, config: RealtimeConfig, context_chars: int) -> ResponseState:
        state = ResponseState(config.audio_out, config.output_format)
        state.input_tokens = context_chars // CHARS_PER_TOKEN
        self.current = state
        await self.send({"type": "response.created", "response": self._response(state, "in_progress")})
        return state

    async def text(self, state: ResponseState, text: str) -> None:
        message = await self._message(state)
        state.transcript += text
        kind = "response.output_audio_transcript.delta" if state.audio_out else "response.output_text.delta"
        await self.send({"type": kind, **self._where(state, message), "delta": text})

    async def audio(
        self, state: ResponseState, pcm: bytes, rate: int, spoken: str, piece: int, piece_s: float = 0.0
    ) -> None:
        if not state.audio_out:
            return
        message = await self._message(state)
        seconds = len(pcm) / 2 / rate
        if piece != state.piece or not message.spans:  # frames of one piece carry the same text
            state.piece = piece
            # The whole piece's length, not what was sent of it: its words are spread over all of
            # it, so a reply cut mid-piece keeps only the words of the part played.
            message.spans.append(Span(message.audio_s, message.audio_s + piece_s, spoken))
        message.audio_s += seconds
        message.spans[-1].end = max(message.spans[-1].end, message.audio_s)
        if state.output_format == "g711_ulaw":
            pcm = ulaw_encode(pcm)
        elif state.output_format == "g711_alaw":
            pcm = alaw_encode(pcm)
        delta = base64.b64encode(pcm).decode()
        await self.send(
            {"type": "response.output_audio.delta", **self._where(state, message), "delta": delta}
        )

    async def function_call(
        self, state: ResponseState, call_id: str, name: str, arguments: dict[str, Any]
    ) -> None:
        """The model wants a client tool: the call item, its arguments, and the end of this response."""
        await self._close_message(state)
        item = Item("function_call", call_id=call_id, name=name, status="in_progress")
        self.items[item.id] = item
        state.output.append(item)
        index = len(state.output) - 1
        where = {"response_id": state.id, "item_id": item.id, "output_index": index}
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": state.id,
                "output_index": index,
                "item": self.render(item),
            }
        )
        await self._item_added(item)
        item.arguments = json.dumps(arguments)
        await self.send(
            {
                "type": "response.function_call_arguments.delta",
                **where,
                "call_id": call_id,
                "delta": item.arguments,
            }
        )
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **where,
                "call_id": call_id,
                "name": name,
                "arguments": item.arguments,
            }
        )
        item.status = "completed"
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": state.id,
                "output_index": index,
                "item": self.render(item),
            }
        )
        await self._item_done(item)
        await self.finish(state)

    async def finish(self, state: ResponseState, heard: str | None = None) -> None:
        """``heard``: the text the engine kept after an interruption (replaces the transcript)."""
        if state.message is not None and heard is not None:
            state.message.text = heard
        await self._close_message(state)
        status = "cancelled" if state.cancel_reason else "completed"
        body = self._response(state, status)
        if state.cancel_reason:
            body["status_details"] = {"type": "cancelled", "reason": state.cancel_reason}
        body["usage"] = self._usage(state)
        state.finished = True
        await self.send({"type": "response.done", "response": body})
        await self.send({"type": "rate_limits.updated", "rate_limits": RATE_LIMITS})
        if self.current is state:
            self.current = None

    # ---- parts ---------------------------------------------------------------------------

    async def _message(self, state: ResponseState) -> Item:
        """The assistant message of the response, announced on its first delta."""
        if state.message is not None:
            return state.message
        item = Item("message", role="assistant", audio=state.audio_out, status="in_progress")
        self.items[item.id] = item
        state.message = item
        state.output.append(item)
        index = len(state.output) - 1
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": state.id,
                "output_index": index,
                "item": {**self.render(item), "content": []},
            }
        )
        await self._item_added(item, empty=True)
        part = {"type": "audio", "transcript": ""} if state.audio_out else {"type": "text", "text": ""}
        await self.send({"type": "response.content_part.added", **self._where(state, item), "part": part})
        return item

    async def _close_message(self, state: ResponseState) -> None:
        item = state.message
        if item is None:
            return
        state.message = None
        if not item.text:
            item.text = state.transcript
        where = self._where(state, item, output_index=state.output.index(item))
        text = item.text
        if state.audio_out:
            await self.send({"type": "response.output_audio.done", **where})
            await self.send({"type": "response.output_audio_transcript.done", **where, "transcript": text})
            part = {"type": "audio", "transcript": text}
        else:
            await self.send({"type": "response.output_text.done", **where, "text": text})
            part = {"type": "text", "text": text}
        await self.send({"type": "response.content_part.done", **where, "part": part})
        item.status = "incomplete" if state.cancel_reason else "completed"
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": state.id,
                "output_index": where["output_index"],
                "item": self.render(item),
            }
        )
        await self._item_done(item)

    async def _item_added(self, item: Item, empty: bool = False) -> None:
        previous = self._previous_id(item)
        body = self.render(item)
        if empty and "content" in body:
            body["content"] = []
        # GA clients follow conversation.item.added/done; beta clients conversation.item.created.
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": body})
        await self.send({"type": "conversation.item.created", "previous_item_id": previous, "item": body})

    async def _item_done(self, item: Item) -> None:
        await self.send(
            {
                "type": "conversation.item.done",
                "previous_item_id": self._previous_id(item),
                "item": self.render(item),
            }
        )

    def _previous_id(self, item: Item) -> str | None:
        ids = list(self.items)
        index = ids.index(item.id) if item.id in ids else len(ids)
        return ids[index - 1] if index > 0 else None

    def _where(self, state: ResponseState, item: Item, output_index: int | None = None) -> dict[str, Any]:
        index = state.output.index(item) if output_index is None else output_index
        return {"response_id": state.id, "item_id": item.id, "output_index": index, "content_index": 0}

    def _response(self, state: ResponseState, status: str) -> dict[str, Any]:
        modalities = ["audio"] if state.audio_out else ["text"]
        return {
            "id": state.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": [self.render(item) for item in state.output] if status != "in_progress" else [],
            "output_modalities": modalities,
            "modalities": ["text", *modalities[:1]] if state.audio_out else ["text"],
            "conversation_id": None,
            "usage": None,
        }

    def _usage(self, state: ResponseState) -> dict[str, Any]:
        text_tokens = sum(len(i.text) + len(i.arguments) for i in state.output) // CHARS_PER_TOKEN
        audio_tokens = round(sum(i.audio_s for i in state.output) * AUDIO_OUT_TOKENS_S)
        output = text_tokens + audio_tokens
        return {
            "total_tokens": state.input_tokens + output,
            "input_tokens": state.input_tokens,
            "output_tokens": output,
            "input_token_details": {"text_tokens": state.input_tokens, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }
