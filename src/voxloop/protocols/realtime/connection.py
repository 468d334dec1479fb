"""One Realtime WebSocket connection: client events in, engine events out.

Turn detection ``server_vad`` hands the audio to the engine's VAD turn-taking; ``null`` (manual
turns) buffers it here until ``input_audio_buffer.commit`` transcribes it into a user item, and
``response.create`` answers the conversation as it stands (``session.reply(None)``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.audio.codec import alaw_decode, ulaw_decode
from voxloop.engine import events
from voxloop.engine.segmenter import SegmenterConfig
from voxloop.engine.session import Session
from voxloop.engine.tools import parse_client_tools
from voxloop.protocols.common import admit_audio, parse_json
from voxloop.protocols.realtime.config import (
    RealtimeConfig,
    apply_update,
    is_beta_shape,
    render,
    semantic_turn,
)
from voxloop.protocols.realtime.items import Item, charge_audio, check_room, parse_item
from voxloop.protocols.realtime.responses import (
    AUDIO_IN_TOKENS_S,
    CANCEL_REASONS,
    ResponseState,
    ResponseWriter,
)
from voxloop.protocols.realtime.wire import RealtimeError, error_event, new_id, rename
from voxloop.service.limits import Lease

log = logging.getLogger(__name__)

MAX_BUFFER_S = 2 * 60  # manual-turn audio held for one commit (5.8 MB at 24 kHz)
MAX_EVENT_CHARS = 16 << 20
# OpenAI voice names have no voxloop voice: they get the server's default voice.
OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)


class RealtimeConnection:
    def __init__(self, websocket: WebSocket, session: Session, beta: bool, model: str) -> None:
        self.websocket, self.session, self.beta, self.model = websocket, session, beta, model
        self.config = RealtimeConfig()
        self.session_id = new_id("sess")
        self.items: dict[str, Item] = {}
        self.writer = ResponseWriter(self.send, self.items, lambda: self.beta)
        self.sending = asyncio.Lock()
        self.buffer = bytearray()  # manual turns: appended audio awaiting commit
        self.speech_item: str | None = None  # the user item announced by speech_started
        self.outputs: dict[str, Item] = {}  # function_call_output items awaiting response.create
        self.event_id: str | None = None  # the client event being handled, for error events
        self.lease: Lease | None = None  # the key's limits (None outside the server's gate)

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        renamed = rename(event, self.beta)
        if renamed is None:
            return
        renamed["event_id"] = new_id("event")
        async with self.sending:
            await self.websocket.send_text(json.dumps(renamed))

    async def error(self, exc: RealtimeError) -> None:
        await self.send(error_event(exc.message, exc.code, param=exc.param, event_id=self.event_id))

    async def history_error(self, message: str) -> None:
        """A failed history write, found off the event path."""
        await self.send(error_event(message, "history_not_saved", kind="server_error"))

    async def start(self) -> None:
        await self.apply_config(self.config)
        await self.send({"type": "session.created", "session": self.render_session()})

    def render_session(self) -> dict[str, Any]:
        return render(self.config, self.beta, self.session_id, self.model)

    # ---- client events ---------------------------------------------------------------------

    async def receive(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self.event_id = None
                if (text := message.get("text")) is None:
                    await self.error(RealtimeError("events must be JSON text frames", "invalid_json"))
                    continue
                try:
                    await self.handle(text)
                except RealtimeError as exc:
                    await self.error(exc)
        except WebSocketDisconnect:
            return

    async def handle(self, raw: str) -> None:
        if len(raw) > MAX_EVENT_CHARS:
            raise RealtimeError(f"event too large ({len(raw)} characters)", "event_too_large")
        try:
            event = parse_json(raw)
        except ValueError as exc:
            raise RealtimeError(f"invalid JSON: {exc}", "invalid_json") from exc
        if isinstance(event, dict) and isinstance(event.get("event_id"), str):
            self.event_id = event["event_id"][:100]  # given back even when the rest is wrong
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RealtimeError("events must be JSON objects with a string 'type'", "invalid_event", "type")
        handler = HANDLERS.get(event["type"])
        if handler is None:
            raise RealtimeError(f"unknown event type {event['type']!r}", "invalid_value", "type")
        await handler(self, event)

    async def session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        config = apply_update(self.config, session)
        if isinstance(session, dict) and is_beta_shape(session):
            self.beta = True  # a beta-shaped client reads beta event names from now on
        await self.apply_config(config)
        if config.input_format != self.config.input_format:
            self.buffer.clear()
        self.config = config
        await self.send({"type": "session.updated", "session": self.render_session()})

    async def apply_config(self, config: RealtimeConfig) -> None:
        """Carries a Realtime session config over to the engine; RealtimeError if it refuses."""
        session = self.session
        voice = None if config.voice.lower() in OPENAI_VOICES else config.voice
        try:
            if voice != session.config.voice:
                session.configure(voice=voice)
        except ValueError as exc:
            raise RealtimeError(f"unknown voice {config.voice!r}: {exc}", param="session.voice") from exc
        tools = parse_client_tools(config.tools) if config.tool_choice != "none" else []
        prompt = config.instructions
        choice = config.tool_choice
        if choice == "required" or isinstance(choice, dict):
            name = choice["name"] if isinstance(choice, dict) else "one of your tools"
            prompt += f"\n\nAlways call {name} before answering."
        turn = config.turn_detection
        changes: dict[str, Any] = {
            "prompt": prompt,
            "client_tools": tools,
            "input_rate": config.input_rate,
            "output_rate": config.output_rate,
            "speed": config.speed,
            "temperature": config.temperature,
            "max_tokens": None if config.max_output_tokens == "inf" else config.max_output_tokens,
        }
        if turn is not None:
            changes["turn"] = dataclasses.replace(
                session.config.turn or SegmenterConfig(),
                threshold=float(turn["threshold"]),
                pre_roll_ms=int(turn["prefix_padding_ms"]),
                hangover_ms=int(turn["silence_duration_ms"]),
                **semantic_turn(turn),
            )
            changes["auto_reply"] = bool(turn["create_response"])
            changes["barge_in"] = dataclasses.replace(
                session.config.barge_in, enabled=turn["interrupt_response"]
            )
        session.configure(**changes)
        session.set_listening(turn is not None)

    async def audio_append(self, event: dict[str, Any]) -> None:
        pcm = self._decode_audio(event.get("audio"))
        admitted, refusal = admit_audio(self.lease, len(pcm) / 2 / self.config.input_rate)
        if refusal:
            raise RealtimeError(refusal, "rate_limit_exceeded")
        if not admitted:
            return  # over the key's audio budget: dropped (the client was told this second)
        if self.config.turn_detection is not None:
            await self.session.push_audio(pcm)
            return
        if len(self.buffer) + len(pcm) > MAX_BUFFER_S * self.config.input_rate * 2:
            raise RealtimeError(
                f"input audio buffer is full ({MAX_BUFFER_S} s): commit or clear it",
                "input_audio_buffer_full",
            )
        self.buffer.extend(pcm)

    def _decode_audio(self, value: object, param: str = "audio") -> bytes:
        """Base64 audio in the session's input format -> PCM16 at ``config.input_rate``."""
        if not isinstance(value, str):
            raise RealtimeError("'audio' must be a base64 string", "invalid_type", param)
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RealtimeError(f"'audio' is not valid base64 ({exc})", "invalid_value", param) from exc
        if self.config.input_format == "g711_ulaw":
            return ulaw_decode(data)
        if self.config.input_format == "g711_alaw":
            return alaw_decode(data)
        if len(data) % 2:
            raise RealtimeError("pcm16 audio must have an even number of bytes", "invalid_value", param)
        return data

    async def audio_commit(self, event: dict[str, Any]) -> None:
        if self.config.turn_detection is not None:
            return  # server_vad commits turns itself; a client commit has nothing left to add
        if not self.buffer:
            raise RealtimeError("the input audio buffer is empty", "input_audio_buffer_commit_empty")
        pcm, self.buffer = bytes(self.buffer), bytearray()
        item = Item("message", role="user", audio=True, status="completed")
        self.items[item.id] = item
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item.id,
                "previous_item_id": self._previous(item.id),
            }
        )
        item.text = await self._transcribe(pcm, self.config.input_rate)
        self._add_to_history(item)
        await self._announce_user_item(item, audio_s=len(pcm) / 2 / self.config.input_rate)

    async def _transcribe(self, pcm: bytes, rate: int) -> str:
        """Audio the client committed, taken as the engine takes an utterance: "" without words."""
        heard = await self.session.audio_turn(pcm, rate)
        return heard.text.strip() if heard is not None else ""

    async def audio_clear(self, event: dict[str, Any]) -> None:
        self.buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def item_create(self, event: dict[str, Any]) -> None:
        item = parse_item(event.get("item"))
        if item.id in self.items:
            raise RealtimeError(f"an item with id {item.id!r} already exists", "duplicate_item_id", "item.id")
        check_room(self.items, item)
        audio_s = len(item.input_audio) / 2 / self.config.input_rate
        charge_audio(self.lease, audio_s)
        if item.type == "function_call_output":
            if self.session.waiting_reply(item.call_id) is None:
                raise RealtimeError(
                    f"no function call is waiting for call_id {item.call_id!r}",
                    "invalid_value",
                    "item.call_id",
                )
            self.outputs[item.call_id] = item
        elif item.input_audio:
            item.text = await self._transcribe(self._pcm_of_item(item), self.config.input_rate)
        if item.type == "message":
            self._add_to_history(item)
        self.items[item.id] = item
        previous = self._previous(item.id)
        for kind in ("conversation.item.added", "conversation.item.created", "conversation.item.done"):
            await self.send({"type": kind, "previous_item_id": previous, "item": item.render(self.beta)})
        if item.input_audio and self.config.transcription is not None:
            await self._send_transcription(item, audio_s)
        item.input_audio = b""  # transcribed: the text is what the conversation keeps

    def _pcm_of_item(self, item: Item) -> bytes:
        if len(item.input_audio) % 2:
            raise RealtimeError("pcm16 audio must have an even number of bytes", param="item.content")
        return item.input_audio

    async def item_truncate(self, event: dict[str, Any]) -> None:
        item = self._item(event.get("item_id"))
        end_ms = event.get("audio_end_ms")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise RealtimeError(
                "'audio_end_ms' must be a non-negative integer", "invalid_value", "audio_end_ms"
            )
        if item.role != "assistant" or not item.audio:
            raise RealtimeError("only assistant audio messages can be truncated", "invalid_value", "item_id")
        current = self.writer.current
        if current is not None and item in current.output:
            await self.session.interrupt("client")  # stop it first; the engine keeps what was heard
            raise RealtimeError(
                "the item is still being spoken: it was cancelled, truncate it after response.done",
                "item_in_progress",
                "item_id",
            )
        if end_ms > round(item.audio_s * 1000) + 50:
            raise RealtimeError(
                f"audio_end_ms {end_ms} is past the item's audio ({item.audio_s * 1000:.0f} ms)",
                "invalid_value",
                "audio_end_ms",
            )
        kept = item.heard_text(end_ms / 1000)
        self._resolve(item)
        if item.message is not None:
            self.session.history.truncate(item.message.id, kept)  # nothing kept: it goes
            if not kept:
                item.message = None
        item.text = kept
        item.audio_s = min(item.audio_s, end_ms / 1000)
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item.id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )

    async def item_delete(self, event: dict[str, Any]) -> None:
        item = self._item(event.get("item_id"))
        current = self.writer.current
        if current is not None and item in current.output:
            raise RealtimeError("the item belongs to the response under way", "item_in_progress", "item_id")
        self._resolve(item)
        if item.message is not None:
            self.session.history.delete(item.message.id)
            item.message = None
        del self.items[item.id]
        await self.send({"type": "conversation.item.deleted", "item_id": item.id})

    async def item_retrieve(self, event: dict[str, Any]) -> None:
        item = self._item(event.get("item_id"))
        self._resolve(item)
        await self.send({"type": "conversation.item.retrieved", "item": item.render(self.beta)})

    async def response_create(self, event: dict[str, Any]) -> None:
        if self.writer.current is not None:
            raise RealtimeError(
                "the conversation already has an active response", "conversation_already_has_active_response"
            )
        outputs, self.outputs = self.outputs, {}
        waiting = [reply for call_id in outputs if (reply := self.session.waiting_reply(call_id))]
        if waiting:  # tool results: the engine's paused reply continues under a new response
            reply = max(waiting, key=lambda waiting_reply: waiting_reply.id)
            reply.tag = await self.writer.create(self.config, self._context_chars())
            for call_id, item in outputs.items():
                with contextlib.suppress(ValueError):  # a call the engine stopped waiting for
                    await self.session.submit_tool_result(call_id, item.output)
            return
        state = await self.writer.create(self.config, self._context_chars())
        await self.session.reply(None, tag=state)  # the response is its tag before its first event

    def _context_chars(self) -> int:
        return sum(len(m.content) for m in self.session.history.messages) + len(self.config.instructions)

    async def response_cancel(self, event: dict[str, Any]) -> None:
        state = self.writer.current
        if state is None:
            raise RealtimeError("there is no response in progress to cancel", "response_cancel_not_active")
        state.cancel_reason = "client_cancelled"
        await self.session.interrupt("client")

    async def ignore(self, event: dict[str, Any]) -> None:
        """Accepted and without effect here (WebRTC/SIP output buffer events)."""

    # ---- engine events ---------------------------------------------------------------------

    async def forward(self) -> None:
        while True:
            await self.on_event(await self.session.next_event())

    async def on_event(self, event: events.Event) -> None:
        match event:
            case events.SpeechStarted(at=at):
                self.speech_item = new_id("item")
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "item_id": self.speech_item,
                        "audio_start_ms": round(at * 1000),
                    }
                )
            case events.SpeechStopped(at=at):
                self.speech_item = self.speech_item or new_id("item")
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "item_id": self.speech_item,
                        "audio_end_ms": round(at * 1000),
                    }
                )
            case events.TranscriptFinal(role="user", text=text, message_id=message_id):
                await self._user_turn(text, message_id)
            case events.TranscriptFinal(role="assistant", text=text, generation=generation, message_id=m):
                state = self._shown(generation)
                if state is not None and state.message is not None:
                    state.message.text, state.message.message_id = text, m
            case events.TextDelta(text=text, generation=generation):
                if (state := await self._state_for(generation)) is not None:
                    await self.writer.text(state, text)
            case events.AudioOut(pcm=pcm, generation=generation, text=text, piece=piece, piece_s=piece_s):
                if (state := await self._state_for(generation)) is not None:
                    await self.writer.audio(state, pcm, self.config.output_rate, text, piece, piece_s)
            case events.ToolCallRequested(
                call_id=call_id, name=name, arguments=arguments, generation=generation
            ):
                if (state := await self._state_for(generation)) is not None:
                    await self.writer.function_call(state, call_id, name, arguments)
            case events.Interrupted(generation=generation, reason=reason):
                state = self._shown(generation)
                if state is not None and state.cancel_reason is None:
                    state.cancel_reason = CANCEL_REASONS.get(reason, "client_cancelled")
            case events.ResponseDone(generation=generation, text=text, interrupted=interrupted):
                await self._response_done(generation, text, interrupted)
            case events.Error(message=message, code=code):
                await self.send(error_event(message, code, kind="server_error"))
            case _:
                pass  # status, visemes, metrics, server tools: nothing in this protocol

    async def _user_turn(self, text: str, message_id: str) -> None:
        """A user turn the engine's VAD found (typed turns and commits created their item already)."""
        if self.config.turn_detection is None or not text:
            return
        item = Item("message", role="user", audio=True, text=text, id=self.speech_item or new_id("item"))
        item.message_id = message_id
        self.speech_item = None
        if item.id in self.items:
            return
        self.items[item.id] = item
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item.id,
                "previous_item_id": self._previous(item.id),
            }
        )
        await self._announce_user_item(item, audio_s=0.0)
        self._resolve(item)

    async def _announce_user_item(self, item: Item, audio_s: float) -> None:
        previous = self._previous(item.id)
        for kind in ("conversation.item.added", "conversation.item.created"):
            await self.send({"type": kind, "previous_item_id": previous, "item": item.render(self.beta)})
        if self.config.transcription is not None:
            await self._send_transcription(item, audio_s)
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.render(self.beta)}
        )

    async def _send_transcription(self, item: Item, audio_s: float) -> None:
        where = {"item_id": item.id, "content_index": 0}
        await self.send(
            {"type": "conversation.item.input_audio_transcription.delta", **where, "delta": item.text}
        )
        usage = {
            "type": "tokens",
            "input_tokens": round(audio_s * AUDIO_IN_TOKENS_S),
            "output_tokens": len(item.text) // 4,
            "total_tokens": round(audio_s * AUDIO_IN_TOKENS_S) + len(item.text) // 4,
        }
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                **where,
                "transcript": item.text,
                "usage": usage,
            }
        )

    def _shown(self, generation: int) -> ResponseState | None:
        """The response showing engine reply ``generation`` (its handle's tag), unless finished:
        events after its response.done (a filler while the client runs a tool) are not shown."""
        reply = self.session.handle(generation)
        state = reply.tag if reply is not None else None
        return state if state is not None and not state.finished else None

    async def _state_for(self, generation: int) -> ResponseState | None:
        """The response an engine event belongs to; a new one for a reply the engine started itself
        (server VAD)."""
        reply = self.session.handle(generation)
        if reply is None or reply.tag is not None:
            return self._shown(generation)
        current = self.writer.current
        if current is not None:  # the engine moved on without finishing it: close it
            current.cancel_reason = current.cancel_reason or "turn_detected"
            await self.writer.finish(current)
        reply.tag = await self.writer.create(self.config, self._context_chars())
        return reply.tag

    async def _response_done(self, generation: int, text: str, interrupted: bool) -> None:
        state = await self._state_for(generation)  # a reply with nothing in it still gets its response
        if state is None:
            return
        if interrupted and state.cancel_reason is None:
            state.cancel_reason = "turn_detected"
        message = state.message
        await self.writer.finish(state, heard=text if interrupted else None)
        for item in self.items.values():  # the engine has written the turn to its history now
            self._resolve(item)
        if message is not None and message.message is None and not interrupted:
            message.text = text or message.text

    # ---- history -------------------------------------------------------------------------

    def _add_to_history(self, item: Item) -> None:
        if item.role is None or not item.text:
            return
        item.message = self.session.add_message(item.role, item.text)
        item.message_id = item.message.id

    def _resolve(self, item: Item) -> None:
        """Ties an item to its history message, by the id the engine's event gave."""
        if item.message is None and item.message_id:
            item.message = self.session.history.find(item.message_id)

    def _item(self, item_id: object) -> Item:
        if not isinstance(item_id, str) or item_id not in self.items:
            raise RealtimeError(f"no item with id {item_id!r}", "item_not_found", "item_id")
        return self.items[item_id]

    def _previous(self, item_id: str) -> str | None:
        ids = list(self.items)
        index = ids.index(item_id) if item_id in ids else len(ids)
        return ids[index - 1] if index > 0 else None


HANDLERS = {
    "session.update": RealtimeConnection.session_update,
    "input_audio_buffer.append": RealtimeConnection.audio_append,
    "input_audio_buffer.commit": RealtimeConnection.audio_commit,
    "input_audio_buffer.clear": RealtimeConnection.audio_clear,
    "conversation.item.create": RealtimeConnection.item_create,
    "conversation.item.truncate": RealtimeConnection.item_truncate,
    "conversation.item.delete": RealtimeConnection.item_delete,
    "conversation.item.retrieve": RealtimeConnection.item_retrieve,
    "response.create": RealtimeConnection.response_create,
    "response.cancel": RealtimeConnection.response_cancel,
    "output_audio_buffer.clear": RealtimeConnection.ignore,
}
