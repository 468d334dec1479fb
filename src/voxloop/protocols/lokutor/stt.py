"""Lokutor continuous speech-to-text at ``/ws/stt``.

First a JSON message ``{"language", "vad", "keyterms"?, "sample_rate"?}``, then binary PCM16 mono
(16 kHz unless ``sample_rate`` says otherwise). The server answers
``{"type": "transcript", "data": text, "isFinal": bool}``: partials while the user speaks, a final
when the VAD ends the utterance or the client sends ``{"type": "end"}``. Problems are answered
``{"type": "error", "data": message}`` and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.audio.pcm import AudioFormatError, StreamResampler, pcm16_to_float
from voxloop.backends import workers
from voxloop.backends.registry import Backends
from voxloop.engine.segmenter import SpeechEnded, UtteranceSegmenter
from voxloop.protocols.common import admit_audio, parse_json
from voxloop.protocols.lokutor.common import StreamOptions, parse_stream_options
from voxloop.service.guard import lease_of

log = logging.getLogger(__name__)

PARTIAL_EVERY_S = 0.6  # new speech between two partial transcripts
MAX_FRAME_BYTES = 1 << 20
MAX_QUEUED_FINALS = 8


class SttSession:
    def __init__(self, websocket: WebSocket, backends: Backends, options: StreamOptions) -> None:
        self.websocket, self.backends, self.options = websocket, backends, options
        vad = backends.vad
        self.segmenter = UtteranceSegmenter(vad.new_stream(), vad.frame_samples, sample_rate=vad.sample_rate)
        self.resampler = StreamResampler(options.sample_rate, vad.sample_rate)
        self.utterance = 0  # id of the utterance being spoken; partials of older ones are dropped
        self.partial_at = 0  # segmenter position of the last partial
        self.partial_task: asyncio.Task[None] | None = None
        self.finals: asyncio.Queue[np.ndarray] = asyncio.Queue(MAX_QUEUED_FINALS)
        self.send_lock = asyncio.Lock()

    async def send(self, message: dict) -> None:
        async with self.send_lock:
            await self.websocket.send_text(json.dumps(message))

    async def transcribe(self, audio: np.ndarray) -> str:
        stt, options = self.backends.stt, self.options
        transcript = await workers.run_in(
            workers.SPEECH, lambda: stt.transcribe(audio, options.language, keyterms=options.keyterms)
        )
        return transcript.text

    async def accept_audio(self, data: bytes) -> None:
        samples = self.resampler.process(pcm16_to_float(data))
        for event in self.segmenter.push(samples):
            if isinstance(event, SpeechEnded):
                await self.end_utterance(event.audio)
        if self.segmenter.speaking and self.partial_task is None:
            position = self.segmenter.position
            if position - self.partial_at >= PARTIAL_EVERY_S * self.segmenter.sample_rate:
                self.partial_at = position
                self.partial_task = asyncio.create_task(self.partial(self.utterance))

    async def end_utterance(self, audio: np.ndarray) -> None:
        self.utterance += 1
        self.partial_at = self.segmenter.position
        try:
            self.finals.put_nowait(audio)
        except asyncio.QueueFull:
            await self.send({"type": "error", "data": "too many utterances waiting: one was dropped"})

    async def partial(self, utterance: int) -> None:
        try:
            text = await self.transcribe(self.segmenter.utterance_audio())
            if text and utterance == self.utterance:
                await self.send({"type": "transcript", "data": text, "isFinal": False})
        finally:
            self.partial_task = None

    async def run_finals(self) -> None:
        while True:
            audio = await self.finals.get()
            try:
                text = await self.transcribe(audio) if audio.size else ""
            except Exception as exc:  # one failed utterance must not end the stream
                log.exception("transcription failed")
                await self.send({"type": "error", "data": f"transcription failed: {exc}"})
                continue
            await self.send({"type": "transcript", "data": text, "isFinal": True})


async def serve_stt(websocket: WebSocket, backends: Backends) -> None:
    session: SttSession | None = None
    finals: asyncio.Task[None] | None = None
    lease = lease_of(websocket)

    async def error(message: str) -> None:
        await websocket.send_text(json.dumps({"type": "error", "data": message}))

    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if session is None:
                options = parse_stream_options(message.get("text"))
                if isinstance(options, str):
                    await error(options)
                    continue
                session = SttSession(websocket, backends, options)
                finals = asyncio.create_task(session.run_finals())
                if message.get("text") is not None:
                    continue
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > MAX_FRAME_BYTES:
                    await error(f"audio frame too large ({len(data)} bytes, at most {MAX_FRAME_BYTES})")
                    continue
                admitted, refusal = admit_audio(lease, len(data) / 2 / session.options.sample_rate)
                if refusal:
                    await error(refusal)
                if not admitted:
                    continue  # over the key's audio budget: the frame is dropped
                try:
                    await session.accept_audio(data)
                except AudioFormatError as exc:
                    await error(str(exc))
                continue
            command = _command_of(text)
            if command == "end":
                ended = session.segmenter.finish()
                await session.end_utterance(ended.audio if ended else np.zeros(0, dtype=np.float32))
            else:
                await error(command)
    except WebSocketDisconnect:
        return
    finally:
        for task in (finals, session.partial_task if session else None):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if session is not None:
            session.segmenter.vad.close()  # hands the VAD engine back to the pool


def _command_of(text: str | None) -> str:
    """'end' for an end-of-utterance request, otherwise an error message."""
    try:
        payload = parse_json(text or "")
    except ValueError:
        return "expected binary PCM16 audio or a JSON control message"
    if isinstance(payload, dict) and payload.get("type") == "end":
        return "end"
    return 'unknown control message; the only one is {"type": "end"}'
