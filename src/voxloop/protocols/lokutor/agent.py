"""Lokutor Voice Chat API (seed 000) at ``/ws/agent``: a thin translator over engine.Session.

In: binary S16LE microphone audio (44.1 kHz unless a ``rates`` message says otherwise; a client
that declares nothing has its rate inferred from how fast the audio arrives) and JSON
``{"type": prompt|voice|language|tools|visemes|rates|max_context_messages|metrics|tool_result}``.
Out: ``status`` / ``transcript`` / ``visemes`` / ``tool_call`` / ``metrics`` / ``error`` JSON and
binary reply audio at the playback rate. voxloop extensions, sent only to clients that opt in:
``metrics`` (per-turn latency) and ``live`` (``partial_transcript`` and ``text_delta``), and
``session_id`` (answered with the id under which ``GET /v1/sessions/{id}`` keeps the history; the
upgrade response carries it too, as ``X-Voxloop-Session``), and ``?session_id=<that id>`` on a
later connection of the same key, which continues that conversation with its history (on any node
sharing the history store).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.audio.pcm import AudioFormatError
from voxloop.backends.registry import Backends
from voxloop.engine import events
from voxloop.engine.session import Session
from voxloop.engine.tools import parse_client_tools
from voxloop.protocols.common import (
    admit_audio,
    check_sample_rate,
    continue_conversation,
    keep_history,
    new_session,
    parse_message,
    run_session,
)
from voxloop.protocols.lokutor.common import RateSniffer
from voxloop.service.guard import lease_of
from voxloop.service.limits import LimitExceeded

log = logging.getLogger(__name__)

MAX_AUDIO_FRAME = 1 << 20
MAX_HELD_BYTES = 4 * 48000  # audio held while the rate is inferred: 2 s at the fastest rate
MAX_HOLD_S = 1.5  # a client that pauses before the first window closes gets its audio anyway


class LokutorAgent:
    def __init__(self, websocket: WebSocket, session: Session, session_id: str | None = None) -> None:
        self.websocket, self.session = websocket, session
        self.want_metrics = False
        self.live = False  # voxloop extension: partial transcripts and streamed reply text
        self.sending = asyncio.Lock()  # replies and event forwarding share one socket
        self.lease = lease_of(websocket)
        self.session_id = session_id or (self.lease.session_id if self.lease else None)
        # Until a `rates` message declares it, the microphone rate is inferred; the first second
        # of audio waits for that decision rather than be heard at the wrong speed.
        self.sniffer: RateSniffer | None = RateSniffer(session.config.input_rate)
        self.held: list[bytes] = []
        self.releasing: asyncio.Future[None] | None = None
        keep_history(session, websocket.app.state, self.lease, self.error, session_id=session_id or "")

    async def send_json(self, message: dict[str, Any]) -> None:
        async with self.sending:
            await self.websocket.send_text(json.dumps(message))

    async def error(self, message: str) -> None:
        await self.send_json({"type": "error", "data": message})

    async def handle_text(self, raw: str) -> None:
        try:
            message = parse_message(raw)
        except ValueError as exc:
            await self.error(str(exc))
            return
        try:
            await self.apply(message["type"], message)
        except ValueError as exc:
            await self.error(str(exc))

    async def apply(self, kind: str, message: dict[str, Any]) -> None:
        data = message.get("data")
        session = self.session
        if kind == "prompt":
            session.configure(prompt=_text(data, "prompt"))
            await self.send_json({"type": "status", "data": "prompt_set"})
        elif kind in ("voice", "language"):
            session.configure(**{kind: _text(data, kind)})
        elif kind == "tools":
            session.configure(client_tools=parse_client_tools(data))
        elif kind == "visemes":
            session.configure(visemes=_flag(data, "visemes"))
        elif kind == "live":
            self.live = _flag(data, "live")
            session.configure(partials=self.live)
        elif kind == "session_id":
            await self.send_json({"type": "session_id", "data": self.session_id})
        elif kind == "metrics":
            self.want_metrics = _flag(data if data is not None else True, "metrics")
        elif kind == "max_context_messages":
            if isinstance(data, bool) or not isinstance(data, int) or not 1 <= data <= 200:
                raise ValueError("max_context_messages must be an integer from 1 to 200")
            session.configure(max_context_messages=data)
        elif kind == "rates":
            rates = data if isinstance(data, dict) else message
            playback = check_sample_rate(rates.get("playback", session.config.output_rate))
            source = check_sample_rate(rates.get("input", session.config.input_rate))
            session.configure(output_rate=playback, input_rate=source)
            if "input" in rates:
                self.sniffer = None  # a declared rate always wins
                await self.push_microphone(b"")
            await self.send_json({"type": "server_rates", "playback": playback, "input": source})
        elif kind == "tool_result":
            body = data if isinstance(data, dict) else message
            call_id, result = body.get("call_id"), body.get("result")
            if not isinstance(call_id, str):
                raise ValueError("tool_result needs a string 'call_id'")
            await session.submit_tool_result(
                call_id, result if isinstance(result, str) else json.dumps(result)
            )
        else:
            raise ValueError(f"unknown message type {kind!r}")

    async def receive(self) -> None:
        """Client messages until it disconnects."""
        websocket = self.websocket
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if (data := message.get("bytes")) is not None:
                    if len(data) > MAX_AUDIO_FRAME:
                        await self.error(f"audio frame too large ({len(data)} bytes)")
                        continue
                    await self.push_microphone(data)
                elif (text := message.get("text")) is not None:
                    await self.handle_text(text)

    async def push_microphone(self, data: bytes) -> None:
        """Audio to the session at its rate: held while the rate of an undeclared microphone is
        still being measured, then released at the rate found."""
        session, sniffer = self.session, self.sniffer
        if sniffer is not None and data:
            if sniffer.observe(len(data) // 2, time.monotonic()):
                session.configure(input_rate=sniffer.rate)
            if not sniffer.decided:
                if not self.held:
                    asyncio.get_running_loop().call_later(MAX_HOLD_S, self._stop_holding)
                self.held.append(data)
                if sum(map(len, self.held)) <= MAX_HELD_BYTES:
                    return
                sniffer.decide_now()
                data = b""
        if self.held:
            data, self.held = b"".join(self.held) + data, []
        if not data or not await self.within_audio_limit(len(data) / 2 / session.config.input_rate):
            return
        try:
            await session.push_audio(data)
        except AudioFormatError as exc:
            await self.error(str(exc))

    def _stop_holding(self) -> None:
        if self.sniffer is not None and not self.sniffer.decided and self.held and not self.session.closed:
            self.sniffer.decide_now()
            self.releasing = asyncio.ensure_future(self.push_microphone(b""))

    async def within_audio_limit(self, seconds: float) -> bool:
        """Over the key's audio budget the frame is dropped and the client told (once a second)."""
        admitted, refusal = admit_audio(self.lease, seconds)
        if refusal:
            await self.error(refusal)
        return admitted

    async def forward_events(self) -> None:
        while True:
            event = await self.session.next_event()
            match event:
                case events.AudioOut(pcm=pcm):
                    async with self.sending:
                        await self.websocket.send_bytes(pcm)
                case events.StatusChanged(status=status, generation=generation):
                    await self.send_json({"type": "status", "data": status, "generation": generation})
                case events.TranscriptFinal(role=role, text=text, generation=generation):
                    await self.send_json(
                        {"type": "transcript", "data": text, "role": role, "generation": generation}
                    )
                case events.Visemes(visemes=marks, generation=generation):
                    await self.send_json({"type": "visemes", "data": marks, "generation": generation})
                case events.ToolCallRequested(
                    call_id=call_id, name=name, arguments=arguments, generation=gen
                ):
                    await self.send_json(
                        {
                            "type": "tool_call",
                            "call_id": call_id,
                            "name": name,
                            "arguments": arguments,
                            "generation": gen,
                        }
                    )
                case events.TranscriptPartial(text=text) if self.live:
                    await self.send_json({"type": "partial_transcript", "data": text})
                case events.TextDelta(text=text, generation=generation) if self.live:
                    await self.send_json({"type": "text_delta", "data": text, "generation": generation})
                case events.TurnMetrics(generation=generation, values=values) if self.want_metrics:
                    millis = {stage: round(seconds * 1000, 1) for stage, seconds in values.items()}
                    await self.send_json({"type": "metrics", "data": millis, "generation": generation})
                case events.Error(message=text):
                    await self.error(text)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{field}' needs a non-empty string in 'data'")
    if len(value) > 20000:
        raise ValueError(f"'{field}' is too long")
    return value


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"'{field}' needs true or false in 'data'")
    return value


async def serve_agent(websocket: WebSocket, backends: Backends) -> None:
    session = new_session(backends)
    # voxloop extension: `?session_id=<id>` (an id this key's earlier conversation was kept under,
    # from the `session_id` message) continues that conversation, on this node or any other.
    session_id = websocket.query_params.get("session_id")
    lease = lease_of(websocket)
    if session_id is not None and lease is not None:
        try:
            await continue_conversation(websocket.app.state, session, lease, session_id)
        except (ValueError, LimitExceeded) as exc:  # LimitExceeded: the shared state does not answer
            await session.close()
            await websocket.send_text(json.dumps({"type": "error", "data": str(exc)}))
            await websocket.close(code=1008)
            return
    agent = LokutorAgent(websocket, session, session_id)
    if await run_session(session, agent.receive(), agent.forward_events()):
        with contextlib.suppress(Exception):
            await websocket.close(code=1008, reason="client stopped reading")
