"""Lokutor streaming TTS (seed 001) at ``/ws`` and ``/ws/tts``.

One JSON request per synthesis; answered by binary S16LE 44.1 kHz chunks (40 ms), viseme JSON
arrays when asked, then the text frame ``EOS``. Any problem is answered ``ERR: <message>`` and
the connection stays open for the next request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voxloop.backends import workers
from voxloop.backends.registry import Backends
from voxloop.backends.tts.base import Voice
from voxloop.backends.tts.stream import frames, speak
from voxloop.backends.tts.visemes import visemes_for
from voxloop.protocols.common import parse_json
from voxloop.service.errors import QuietLog
from voxloop.service.guard import lease_of
from voxloop.service.limits import LimitExceeded
from voxloop.service.metrics import TTS_FIRST_AUDIO

log = logging.getLogger(__name__)
FAILED = QuietLog(log)  # a text that trips a model would otherwise log a traceback per request

OUTPUT_RATE = 44100
CLIENT_STALL_S = 10.0
RENDER_MARGIN_S = 0.5  # a piece is due this long before the audio before it has played out
DEFAULT_VOICE = "M1"  # seed 001's default for a request that names none


class TtsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: StrictStr
    voice: StrictStr | None = None
    lang: StrictStr | None = Field(None, validation_alias=AliasChoices("lang", "language"))
    speed: float = Field(1.05, ge=0.25, le=4.0)
    # Accepted for compatibility and otherwise ignored: none of voxloop's voices has a step count
    # or a model version to trade quality for speed (docs/voices.md).
    steps: int = Field(5, ge=1, le=100)
    version: StrictStr = "versa-1.0"
    visemes: StrictBool = False


def describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    return f"invalid '{where}': {first['msg']}"


def parse_request(raw: str, max_chars: int) -> TtsRequest:
    try:
        payload = parse_json(raw)
    except ValueError as exc:
        raise ValueError(f"request is {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError("request must be a JSON object with a 'text' field")
    try:
        request = TtsRequest.model_validate(payload)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from exc
    if not request.text.strip():
        raise ValueError("'text' is empty")
    if len(request.text) > max_chars:
        raise ValueError(f"'text' is too long ({len(request.text)} characters, at most {max_chars})")
    return request


async def serve_tts(websocket: WebSocket, backends: Backends) -> None:
    speaker = backends.speaker
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                await websocket.send_text("ERR: expected a JSON text message, got binary data")
                continue
            try:
                request = parse_request(raw, backends.settings.max_tts_chars)
                voice = speaker.resolve(request.voice or DEFAULT_VOICE, request.lang)
                language = speaker.language_of(request.lang, voice)
            except ValueError as exc:
                await websocket.send_text(f"ERR: {exc}")
                continue
            try:
                await synthesize_to(websocket, backends, request, voice, language)
            except WebSocketDisconnect:
                return
            except LimitExceeded as exc:
                await websocket.send_text(f"ERR: {exc.message}")
            except Exception as exc:  # a model failure must not take the connection down
                states = {websocket.client_state, websocket.application_state}
                if states != {WebSocketState.CONNECTED}:
                    return  # the client left, or the server closed (drain), mid-stream
                FAILED.warning("synthesis failed: %s: %s", type(exc).__name__, exc)
                await websocket.send_text("ERR: synthesis failed")  # internal details stay in the log
    except WebSocketDisconnect:
        return


async def synthesize_to(
    websocket: WebSocket, backends: Backends, request: TtsRequest, voice: Voice, language: str
) -> None:
    started = time.perf_counter()
    offset = 0.0
    first = True
    lease = lease_of(websocket)
    # Each piece is due when the audio sent before it would have played from the request on: a
    # new request's first piece goes before the tenth of a long one (or of a client that stopped
    # reading and whose socket buffers still take megabytes), so no request starves the others.
    requested = time.monotonic()
    workers.DUE.set(lambda: requested + offset - RENDER_MARGIN_S)

    async def send(message: str | bytes) -> None:
        # A client that stops reading would otherwise hold a shared speech worker indefinitely.
        payload = {"text": message} if isinstance(message, str) else {"bytes": message}
        try:
            await asyncio.wait_for(websocket.send({"type": "websocket.send", **payload}), CLIENT_STALL_S)
        except TimeoutError as exc:
            await websocket.close(code=1008, reason="client stopped reading")
            raise WebSocketDisconnect(1008) from exc

    async for speech in speak(backends.speaker, request.text, voice, language, request.speed, OUTPUT_RATE):
        if lease is not None:
            lease.audio(speech.duration)  # synthesised speech counts against the key's audio budget
        if request.visemes:
            marks = visemes_for(speech.text, speech.duration, offset, speech.audio)
            await send(json.dumps(marks))
        for frame in frames(speech.pcm, OUTPUT_RATE):
            await send(frame)
            if first:
                TTS_FIRST_AUDIO.observe(time.perf_counter() - started)
                first = False
        offset += speech.duration
    await send("EOS")
