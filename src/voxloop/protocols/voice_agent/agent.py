"""VoiceAgent SDK protocol (voice-agent-ai-sdk) at ``/v1/voice-agent`` and ``/v1/video-agent``.

In (JSON): ``transcript`` {text}, ``audio`` {data: base64, format?: 'webm' | 'audio/webm;codecs=opus'
| 'mp3' | ... or absent}, ``interrupt`` {reason?}, ``client_ready`` {capabilities?} and, on the video
route, ``video_frame`` {sequence, timestamp, triggerReason, image: {data, format, width, height}}.
Out, per reply: ``stream_start``, ``text_start``/``text_delta``/``text_end`` {id}, ``reasoning_*``,
``tool_call`` / ``tool_result`` (server-side tools), ``speech_stream_start``, ``audio_chunk``
{chunkId, data, format, text} (one self-contained MP3 or WAV per spoken sentence or clause),
``speech_stream_end``, ``stream_finish`` and ``response_complete`` {text}; an interrupted reply gets
``speech_interrupted`` {reason} and ``stream_abort`` instead. Also ``transcription_result`` /
``transcription_error`` for audio turns, ``session_init`` / ``capture_frame`` / ``frame_ack`` for
video, and ``error`` {message, error} for anything the server will not take.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.audio import codec
from voxloop.audio.pcm import pcm16_to_float, write_wav
from voxloop.backends.registry import Backends
from voxloop.backends.stt.base import Transcript
from voxloop.engine import events
from voxloop.engine.session import Session
from voxloop.protocols.common import admit_audio, keep_history, new_session, parse_message, run_session
from voxloop.protocols.voice_agent.frames import FrameRejected, VisualContext, parse_frame
from voxloop.protocols.voice_agent.wire import MAX_AUDIO_BYTES, audio_format, decode_base64
from voxloop.service.guard import lease_of

log = logging.getLogger(__name__)

MAX_AUDIO_S = 60.0  # longest utterance transcribed
MAX_TEXT_CHARS = 4000
MAX_PENDING_INPUTS = 4  # user turns waiting for the one being transcribed
OUTPUT_RATE = 24000  # reply audio: MP3 (MPEG-2 layer III) and WAV both carry 24 kHz


@dataclass
class Reply:
    """Wire state of one reply (one engine generation)."""

    generation: int
    text_id: str
    text: str = ""
    started: bool = False
    text_open: bool = False
    reasoning_open: bool = False
    speaking: bool = False
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"  # the last LLM request's
    usage: dict[str, int] = field(  # summed over the reply's LLM requests, in the AI SDK's names
        default_factory=lambda: {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}
    )


class VoiceAgentConnection:
    def __init__(self, websocket: WebSocket, session: Session, video: bool, output_format: str) -> None:
        self.websocket, self.session, self.video = websocket, session, video
        self.output_format = output_format
        self.lease = lease_of(websocket)
        # The key's session id (X-Voxloop-Session, /v1/sessions/{id}) when the gate gave one.
        self.session_id = self.lease.session_id if self.lease else f"vs_{uuid.uuid4().hex[:16]}"
        keep_history(session, websocket.app.state, self.lease, self.error)
        self.sending = asyncio.Lock()
        self.inputs: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(MAX_PENDING_INPUTS)
        self.next_chunk_id = 0
        self.interrupt_reason = "interrupted"  # the client's words for its last interrupt
        self.visual = VisualContext()

    # ---- sending -------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        async with self.sending:
            await self.websocket.send_text(json.dumps(message))

    async def error(self, message: str, **extra: Any) -> None:
        await self.send(error_message(message, **extra))

    # ---- receiving -----------------------------------------------------------------------

    async def receive(self) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await self.handle_text(message["text"])
                elif message.get("bytes") is not None:
                    await self.error("binary frames are not part of this protocol: send JSON messages")

    async def handle_text(self, raw: str) -> None:
        try:
            message = parse_message(raw)
        except ValueError as exc:
            await self.error(str(exc))
            return
        try:
            await self.apply(message["type"], message)
        except FrameRejected as exc:
            sequence = message.get("sequence")
            sequence = (
                sequence if isinstance(sequence, int | float) and not isinstance(sequence, bool) else None
            )
            await self.error(f"frame rejected: {exc}", reason=exc.code, sequence=sequence)
        except ValueError as exc:
            await self.error(str(exc))

    async def apply(self, kind: str, message: dict[str, Any]) -> None:
        if kind == "transcript":
            text = message.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("transcript needs a non-empty 'text'")
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"transcript too long ({len(text)} characters, at most {MAX_TEXT_CHARS})")
            await self.queue_input("text", text.strip())
            await self.session.interrupt("new_input")  # as the SDK: the reply stops on receipt
        elif kind == "audio":
            hint = audio_format(message.get("format"))
            data = decode_base64(message.get("data"), MAX_AUDIO_BYTES, "audio")
            await self.queue_input("audio", (data, hint))
            await self.session.interrupt("new_input")  # the user spoke: stop now, not after the STT
        elif kind == "interrupt":
            reason = message.get("reason")
            self.interrupt_reason = reason[:100] if isinstance(reason, str) and reason else "client_request"
            await self.session.interrupt("client")
        elif kind == "client_ready":
            await self.send({"type": "session_init", "sessionId": self.session_id})
            if self.video:
                await self.capture_frame("initial")
        elif kind == "video_frame":
            if not self.video:
                raise ValueError("video_frame is only accepted on /v1/video-agent")
            frame = parse_frame(message)
            self.visual.add(frame)
            self.session.set_images(self.visual.images())
            await self.send({"type": "frame_ack", "sequence": frame.sequence, "timestamp": _now_ms()})
        else:
            raise ValueError(f"unknown message type {kind!r}")

    async def queue_input(self, kind: str, payload: Any) -> None:
        """User turns are answered one at a time, in order (as the SDK's input queue does)."""
        if self.video:
            await self.capture_frame("user_request")  # a fresh look at what the user talks about
        try:
            self.inputs.put_nowait((kind, payload))
        except asyncio.QueueFull:
            raise ValueError("too many user turns waiting; wait for a reply before sending more") from None

    async def capture_frame(self, reason: str) -> None:
        await self.send({"type": "capture_frame", "reason": reason, "timestamp": _now_ms()})

    async def answer_inputs(self) -> None:
        while True:
            kind, payload = await self.inputs.get()
            try:
                # a new turn interrupts the reply under way: "new_input"
                if kind == "text":
                    await self.session.reply(payload)
                elif (heard := await self.transcribe(*payload)) is not None:
                    await self.session.reply(heard.text.strip(), language=heard.language)
            except Exception as exc:  # one bad turn must not end the session
                log.exception("voice-agent turn failed")
                await self.error(f"turn failed: {exc}")

    async def transcribe(self, data: bytes, hint: str | None) -> Transcript | None:
        """A clip as the engine takes an utterance (word check, language following), told to the client."""
        try:
            audio = await asyncio.to_thread(codec.decode_audio, data, hint)
        except codec.AudioFormatError as exc:
            await self.error(f"could not decode the audio ({hint or 'format not given'}): {exc}")
            return None
        if audio.size == 0 or audio.size > MAX_AUDIO_S * 16000:
            await self.error(f"audio must be between 0 and {MAX_AUDIO_S:.0f} seconds long")
            return None
        admitted, refusal = admit_audio(self.lease, audio.size / 16000)
        if not admitted:
            await self.error(refusal or "audio over this key's budget")
            return None
        transcript = await self.session.audio_turn(audio)
        if transcript is None:
            await self.send({"type": "transcription_error", "error": "no speech was recognised"})
            return None
        text = transcript.text.strip()
        await self.send({"type": "transcription_result", "text": text, "language": transcript.language})
        return transcript

    # ---- engine events -> wire -----------------------------------------------------------

    def reply_for(self, generation: int) -> Reply:
        """The wire state of a reply, kept on the engine's handle for it."""
        handle = self.session.handle(generation)
        if handle is None:  # long forgotten: its late events start nothing that lasts
            return Reply(generation, f"txt_{generation}")
        if handle.tag is None:
            handle.tag = Reply(generation, f"txt_{generation}")
        return handle.tag

    async def start(self, reply: Reply) -> None:
        if not reply.started:
            reply.started = True
            await self.send({"type": "stream_start"})

    async def forward_events(self) -> None:
        while True:
            event = await self.session.next_event()
            match event:
                case events.TextDelta(text=text, generation=generation):
                    reply = self.reply_for(generation)
                    await self.start(reply)
                    if not reply.text_open:
                        reply.text_open = True
                        await self.send({"type": "text_start", "id": reply.text_id})
                    reply.text += text
                    await self.send({"type": "text_delta", "id": reply.text_id, "text": text})
                case events.ReasoningDelta(text=text, generation=generation):
                    reply = self.reply_for(generation)
                    await self.start(reply)
                    reasoning_id = f"rsn_{generation}"
                    if not reply.reasoning_open:
                        reply.reasoning_open = True
                        await self.send({"type": "reasoning_start", "id": reasoning_id})
                    await self.send({"type": "reasoning_delta", "id": reasoning_id, "text": text})
                case events.ToolStarted(call_id=call_id, name=name, arguments=arguments, generation=g):
                    reply = self.reply_for(g)
                    await self.start(reply)
                    call = {"toolName": name, "toolCallId": call_id, "input": arguments}
                    reply.tool_calls.append(call)
                    await self.send({"type": "tool_call", **call})
                case events.ToolFinished(call_id=call_id, name=name, result=result, generation=g):
                    output = _json_or_text(result)
                    self.reply_for(g).tool_results.append(
                        {"toolName": name, "toolCallId": call_id, "output": output}
                    )
                    # `toolName` as the SDK sends it, `name` as its docs show it.
                    await self.send(
                        {
                            "type": "tool_result",
                            "toolName": name,
                            "name": name,
                            "toolCallId": call_id,
                            "result": output,
                        }
                    )
                case events.AudioOut(pcm=pcm, generation=generation, text=text):
                    await self.audio_chunk(self.reply_for(generation), pcm, text)
                case events.LlmUsage(generation=generation) as usage:
                    reply = self.reply_for(generation)
                    reply.finish_reason = usage.finish_reason
                    reply.usage["inputTokens"] += usage.input_tokens
                    reply.usage["outputTokens"] += usage.output_tokens
                    reply.usage["totalTokens"] += usage.input_tokens + usage.output_tokens
                case events.Interrupted(generation=generation, reason=reason):
                    await self.send({"type": "speech_interrupted", "reason": self.wire_reason(reason)})
                case events.ResponseDone(generation=generation, text=text, interrupted=interrupted):
                    handle = self.session.handle(generation)
                    reply = handle.tag if handle is not None and handle.tag else Reply(generation, "")
                    await self.finish(reply, text, interrupted)
                case events.Error(message=message, code=code):
                    await self.error(message, code=code)

    def wire_reason(self, reason: str) -> str:
        # The SDK says "user_speaking" when new input cuts a reply, and echoes the client's reason.
        return {"new_input": "user_speaking", "barge_in": "user_speaking"}.get(reason, self.interrupt_reason)

    async def audio_chunk(self, reply: Reply, pcm: bytes, text: str | None) -> None:
        if not pcm:
            return
        await self.start(reply)
        if not reply.speaking:
            reply.speaking = True
            await self.send({"type": "speech_stream_start"})
        encode = codec.encode_mp3 if self.output_format == "mp3" else _encode_wav
        data = await asyncio.to_thread(encode, pcm, OUTPUT_RATE)
        chunk_id, self.next_chunk_id = self.next_chunk_id, self.next_chunk_id + 1
        await self.send(
            {
                "type": "audio_chunk",
                "chunkId": chunk_id,
                "data": base64.b64encode(data).decode(),
                "format": self.output_format,
                "text": text or "",
            }
        )

    async def finish(self, reply: Reply, heard: str, interrupted: bool) -> None:
        """The SDK's endings: text_end, stream_finish {finishReason, usage}, response_complete; or,
        cut short, speech_stream_end, stream_abort and response_complete with the text so far."""
        if not interrupted:
            if reply.text_open:
                await self.send({"type": "text_end", "id": reply.text_id})
            if reply.reasoning_open:
                await self.send({"type": "reasoning_end", "id": f"rsn_{reply.generation}"})
        if reply.speaking:
            await self.send({"type": "speech_stream_end"})
        if interrupted:
            await self.send({"type": "stream_abort", "reason": self.interrupt_reason})
        else:
            await self.send(
                {"type": "stream_finish", "finishReason": reply.finish_reason, "usage": reply.usage}
            )
        await self.send(
            {
                "type": "response_complete",
                "text": reply.text.strip() or heard,
                "toolCalls": reply.tool_calls,
                "toolResults": reply.tool_results,
            }
        )


def error_message(message: str, **extra: Any) -> dict[str, Any]:
    # `message` as the SDK docs show it, `error` as the SDK's VideoAgent sends it.
    return {"type": "error", "message": message, "error": message, **extra}


def error_shape(message: str) -> str:
    """An error as a refusal at the gate (key, limits) sends it."""
    return json.dumps(error_message(message))


def _json_or_text(result: str) -> Any:
    try:
        return json.loads(result)
    except (json.JSONDecodeError, RecursionError):
        return result


def _encode_wav(pcm: bytes, rate: int) -> bytes:
    return write_wav(pcm16_to_float(pcm), rate)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def serve(websocket: WebSocket, backends: Backends, video: bool) -> None:
    output_format = websocket.query_params.get("format", "mp3").lower()
    if output_format not in ("mp3", "wav"):
        await websocket.send_text(error_shape("format must be mp3 or wav"))
        await websocket.close(code=1008)
        return
    # One audio chunk per spoken sentence or clause (frame_ms=None), as the SDK's speech queue does.
    session = new_session(backends, frame_ms=None, output_rate=OUTPUT_RATE)
    session.set_listening(False)  # no microphone stream: turns arrive whole
    connection = VoiceAgentConnection(websocket, session, video, output_format)
    stalled = await run_session(
        session, connection.receive(), connection.forward_events(), connection.answer_inputs()
    )
    if stalled:
        with contextlib.suppress(Exception):
            await websocket.close(code=1008, reason="client stopped reading")


async def serve_voice_agent(websocket: WebSocket, backends: Backends) -> None:
    await serve(websocket, backends, video=False)


async def serve_video_agent(websocket: WebSocket, backends: Backends) -> None:
    await serve(websocket, backends, video=True)
