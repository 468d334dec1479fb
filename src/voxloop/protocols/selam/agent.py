"""One SelamGPT Socket.IO connection: at most one engine Session at a time, its events forwarded.

In: ``start_session``, ``audio_chunk`` (base64 PCM16), ``control``, ``end_session``.
Out: ``session_started``, ``transcription``, ``response``, ``audio_chunk`` (one self-contained MP3
per spoken piece, so a browser can play each as it comes), ``audio_end``, ``control_ack``,
``session_ended`` and ``error``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from voxloop.audio.codec import encode_mp3_timed
from voxloop.audio.pcm import AudioFormatError
from voxloop.audio.stream import StreamDecoder, stream_container
from voxloop.backends.registry import Backends
from voxloop.engine import events
from voxloop.engine.session import Session
from voxloop.protocols.common import admit_audio, check_sample_rate, keep_history, new_session, run_session
from voxloop.protocols.selam.options import SelamError, StartOptions, barge_in_for, parse_start, turn_for
from voxloop.protocols.selam.pacing import PlayOnArrival
from voxloop.service.limits import Lease

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 1 << 20  # decoded PCM per audio_chunk: 32 s at 16 kHz
OUTPUT_RATE = 24000  # MP3 out: every voice's native rate is 22.05 or 24 kHz
PCM_FORMATS = frozenset({"pcm16", "pcm", "pcm_s16le", "s16le", "linear16", "raw"})
# Streams a browser's MediaRecorder writes: decoded whatever `format` says (the seed's own example
# sends them as "pcm16"), the first chunk with the header, the next ones continuing it.
STREAM_FORMATS = frozenset({"webm", "ogg", "opus", "audio/webm", "audio/ogg"})
CONTAINER_MAGIC = {b"RIFF": "WAV", b"ID3": "MP3", b"fLaC": "FLAC"}  # whole files: not a stream

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class SelamAgent:
    def __init__(
        self,
        backends: Backends,
        emit: Emit,
        hang_up: Callable[[], Awaitable[None]],
        lease: Lease | None = None,
        state: Any = None,
    ) -> None:
        self.backends, self.emit, self.hang_up = backends, emit, hang_up
        self.lease, self.state = lease, state  # the connection's lease; app state for the history store
        self.session: Session | None = None
        self.session_id: str | None = None
        self.runner: asyncio.Task[None] | None = None
        self.ending = asyncio.Event()
        self.chunks = 0  # audio_chunk events of the reply being played
        self.decoder: StreamDecoder | None = None  # the MediaRecorder stream being received
        self.pacer: PlayOnArrival | None = None  # reply events, timed for play-on-arrival clients

    # ---- client events -------------------------------------------------------------------

    async def start_session(self, data: object, default_voice: str) -> None:
        if self.session is not None:
            raise SelamError("session_error", "a session is already running; end_session first")
        options = parse_start(data, default_voice, self.backends.speaker)
        session = self._new_session(options)
        self.session, self.session_id = session, f"sess_{uuid.uuid4().hex}"
        keep_history(session, self.state, self.lease, self.history_error, session_id=self.session_id)
        self.ending = asyncio.Event()
        self.pacer = self.pacer or PlayOnArrival(self.emit)
        self.runner = asyncio.create_task(self._run(session, self.ending, self.pacer))
        await self.emit(
            "session_started",
            {
                "session_id": self.session_id,
                "status": "started",
                "voice": options.voice_name,
                "language": options.language or "auto",
                "mode": "translation" if options.language else "auto_detect",
                "vad_threshold": options.vad_threshold,
                "interrupt_threshold": options.interrupt_threshold,
                "input": {"format": "pcm16", "sample_rate": session.config.input_rate, "channels": 1},
                "output": {"format": "mp3", "sample_rate": OUTPUT_RATE},
            },
        )

    def _new_session(self, options: StartOptions) -> Session:
        changes: dict[str, Any] = {
            "voice": options.voice,
            "input_rate": 16000,
            "output_rate": OUTPUT_RATE,
            "partials": True,
            "frame_ms": None,  # one AudioOut per spoken piece: one playable MP3 each
            "detect_language": True,
            # With a language the agent answers in it whatever the user speaks (translation);
            # without, it answers in the language it hears, switching STT model and voice.
            "follow_language": options.language is None,
        }
        if options.language or options.voice_language:
            changes["language"] = options.language or options.voice_language
        if options.instructions:
            changes["prompt"] = options.instructions
        try:
            session = new_session(self.backends, **changes)
            session.configure(
                turn=turn_for(options.vad_threshold, session.config.turn),
                barge_in=barge_in_for(options.interrupt_threshold, session.config.barge_in),
            )
        except ValueError as exc:
            raise SelamError("validation_error", str(exc)) from exc
        return session

    async def audio_chunk(self, data: object) -> None:
        session = self._require_session("audio_chunk")
        if not isinstance(data, dict):
            raise SelamError("audio_error", "audio_chunk takes an object {audio, format, sample_rate}")
        fmt = data.get("format", "pcm16")
        if not isinstance(fmt, str) or fmt.lower().split(";")[0] not in PCM_FORMATS | STREAM_FORMATS:
            raise SelamError(
                "audio_error", f"unsupported audio format {fmt!r}; send 'pcm16' or 'webm'", "bad_format"
            )
        raw = _decode_base64(data.get("audio"))
        container = stream_container(raw)
        if container is None and self.decoder is None and fmt.lower().split(";")[0] in STREAM_FORMATS:
            raise SelamError(
                "audio_error",
                f"a {fmt} stream starts with its header: send the recorder's first chunk first",
                "bad_stream",
            )
        if container is not None or self.decoder is not None:
            pcm, rate = await self._decode_stream(raw, container), 16000
        else:
            rate = data.get("sample_rate", 16000)
            try:
                rate = check_sample_rate(rate)
            except ValueError as exc:
                raise SelamError("audio_error", str(exc), "bad_sample_rate") from exc
            pcm = _check_pcm(raw)
        admitted, refusal = admit_audio(self.lease, len(pcm) / 2 / rate)
        if refusal:
            raise SelamError("authorization_error", refusal, "rate_limited")  # as for the message rate
        if not admitted:
            return  # over the key's audio budget: dropped (the client was told this second)
        if rate != session.config.input_rate:
            session.configure(input_rate=rate)
        try:
            await session.push_audio(pcm)
        except AudioFormatError as exc:
            raise SelamError("audio_error", str(exc)) from exc

    async def _decode_stream(self, chunk: bytes, container: str | None) -> bytes:
        """PCM16 at 16 kHz from a MediaRecorder chunk; a chunk with a header starts a new stream."""
        if container is not None:
            self._close_decoder()
            self.decoder = StreamDecoder(container, 16000)
        decoder = self.decoder
        assert decoder is not None
        try:
            return await asyncio.to_thread(decoder.feed, chunk)
        except AudioFormatError as exc:
            self._close_decoder()  # the next chunk with a header (or plain PCM) starts afresh
            raise SelamError("audio_error", str(exc), "bad_stream") from exc

    def _close_decoder(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None

    async def control(self, data: object) -> None:
        action = data.get("action") if isinstance(data, dict) else data
        if not isinstance(action, str) or action not in CONTROL_ACTIONS:
            raise SelamError(
                "validation_error",
                f"unknown control action {action!r}; use one of {', '.join(CONTROL_ACTIONS)}",
                "unknown_action",
            )
        session = self._require_session("control")
        if action == "interrupt":
            await session.interrupt("client")
        elif action in ("start_listening", "stop_listening"):
            session.set_listening(action == "start_listening")
        elif action == "pause":  # the whole conversation holds: no reply audio, no listening
            session.pause_output()
            session.set_listening(False)
        else:  # resume
            session.resume_output()
            session.set_listening(True)
        await self.emit("control_ack", {"action": action, "status": "executed"})

    async def end_session(self, data: object, owner_of: Callable[[str], bool | None]) -> None:
        wanted = data.get("session_id") if isinstance(data, dict) else None
        if wanted is not None and wanted != self.session_id:
            if owner_of(str(wanted)):  # another connection's session: not this client's to end
                raise SelamError("authorization_error", "that session belongs to another connection")
            raise SelamError("session_error", f"session {wanted!r} not found")
        session_id = self.session_id
        if session_id is None:
            raise SelamError("session_error", "no session to end; start_session first")
        await self.close()
        await self.emit("session_ended", {"session_id": session_id, "status": "ended"})

    async def close(self) -> None:
        """Ends the session (if any) and waits until the engine let go of it."""
        runner, self.runner = self.runner, None
        self.session = self.session_id = None
        self._close_decoder()
        self.ending.set()
        if runner is not None and runner is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        pacer, self.pacer = self.pacer, None
        if pacer is not None:
            await pacer.close()

    def _require_session(self, event: str) -> Session:
        if self.session is None:
            raise SelamError("session_error", f"{event} before start_session: start a session first")
        return self.session

    # ---- engine events -------------------------------------------------------------------

    async def _run(self, session: Session, ending: asyncio.Event, pacer: PlayOnArrival) -> None:
        try:
            stalled = await run_session(session, self._forward(session, pacer), ending.wait())
        except Exception:
            log.exception("SelamGPT session failed")
            stalled = False
        if self.session is session:  # ended by the engine, not by the client
            self.session = self.session_id = None
            self.runner = None
            if stalled:
                await self.hang_up()  # the client stopped reading: free the models for others
            else:
                await self._send_error(SelamError("session_error", "the session ended; start a new one"))

    async def history_error(self, message: str) -> None:
        """A failed history write, found off the event path."""
        await self._send_error(SelamError("session_error", message, "history_error"))

    async def _send_error(self, error: SelamError) -> None:
        with contextlib.suppress(Exception):
            await self.emit("error", error.payload())

    async def _forward(self, session: Session, pacer: PlayOnArrival) -> None:
        while True:
            event = await session.next_event()
            match event:
                case events.TranscriptPartial(text=text):
                    await self.emit("transcription", {"text": text, "is_final": False})
                case events.TranscriptFinal(role="user", text=text, generation=generation):
                    language = getattr(event, "language", None)
                    self.chunks = 0
                    await self.emit(
                        "transcription",
                        {"text": text, "is_final": True, "language": language, "generation": generation},
                    )
                case events.AudioOut(pcm=pcm, generation=generation):
                    text = getattr(event, "text", "") or ""
                    rate = session.config.output_rate
                    mp3, seconds = await asyncio.to_thread(encode_mp3_timed, pcm, rate)
                    piece = [("response", {"text": text, "generation": generation})] if text else []
                    self.chunks += 1
                    chunk = {
                        "audio": base64.b64encode(mp3).decode(),
                        "format": "mp3",
                        "sample_rate": rate,
                        "chunk_index": self.chunks - 1,
                        "text": text,
                        "generation": generation,
                    }
                    pacer.put([*piece, ("audio_chunk", chunk)], generation, seconds)
                case events.ResponseDone(generation=generation, text=text, interrupted=interrupted):
                    if interrupted:
                        pacer.drop(generation)
                    end = {"total_chunks": self.chunks, "text": text, "interrupted": interrupted}
                    pacer.put([("audio_end", {**end, "generation": generation})], generation)
                    self.chunks = 0
                case events.Error(message=message, code=code):
                    await self._send_error(SelamError("session_error", message, code))


CONTROL_ACTIONS = ("interrupt", "start_listening", "stop_listening", "pause", "resume")


def _decode_base64(audio: object) -> bytes:
    """Audio bytes from base64 text (a data: URL too) or a Socket.IO binary attachment."""
    if isinstance(audio, bytes | bytearray):
        pcm = bytes(audio)
    elif isinstance(audio, str):
        if len(audio) > MAX_CHUNK_BYTES * 4 // 3 + 64:
            raise SelamError("audio_error", f"audio chunk over {MAX_CHUNK_BYTES} bytes", "chunk_too_large")
        text = audio.split(",", 1)[1] if audio.startswith("data:") else audio
        try:
            pcm = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SelamError("audio_error", f"'audio' is not valid base64: {exc}", "bad_base64") from exc
    else:
        raise SelamError("audio_error", "'audio' must be base64-encoded PCM16", "missing_audio")
    if len(pcm) > MAX_CHUNK_BYTES:
        raise SelamError("audio_error", f"audio chunk over {MAX_CHUNK_BYTES} bytes", "chunk_too_large")
    return pcm


def _check_pcm(pcm: bytes) -> bytes:
    for magic, name in CONTAINER_MAGIC.items():
        if pcm.startswith(magic):
            raise SelamError(
                "audio_error",
                f"audio looks like a {name} file, not raw PCM16; send 16-bit mono PCM or a WebM stream",
                "bad_format",
            )
    if len(pcm) % 2:
        raise SelamError("audio_error", f"PCM16 audio has an odd byte count ({len(pcm)})", "odd_length")
    return pcm
