"""A VoiceAgent SDK client for /v1/voice-agent and /v1/video-agent (tests and benchmarks): JSON in
and out over a real WebSocket, every received message logged with its arrival time, and the audio
formats a browser client would send (encoded with PyAV, FFmpeg's libraries)."""

from __future__ import annotations

import base64
import contextlib
import fractions
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from voxloop.audio.pcm import float_to_pcm16


@dataclass
class Message:
    at: float
    body: dict


@dataclass
class VoiceAgentClient:
    url: str
    log: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(self.url, max_size=1 << 24, open_timeout=30))
        self.changed = threading.Condition()
        self.closed = False
        self.receiver = threading.Thread(target=self._receive, daemon=True)
        self.receiver.start()

    def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for raw in self.ws:
                with self.changed:
                    self.log.append(Message(time.monotonic(), json.loads(raw)))
                    self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def send(self, message: dict) -> float:
        self.ws.send(json.dumps(message))
        return time.monotonic()

    def ask(self, text: str) -> float:
        return self.send({"type": "transcript", "text": text})

    def wait_for(self, match: Callable[[dict], bool], since: float = 0.0, timeout: float = 90.0) -> Message:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for message in self.log:
                    if message.at >= since and match(message.body):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    kinds = [m.body.get("type") for m in self.log if m.at >= since]
                    raise AssertionError(
                        f"no matching message ({'closed' if self.closed else 'timeout'}): {kinds}"
                    )
                self.changed.wait(left)

    def wait_type(self, kind: str, since: float = 0.0, timeout: float = 90.0) -> Message:
        return self.wait_for(lambda body: body.get("type") == kind, since, timeout)

    def between(self, start: float, end: float = float("inf"), kind: str | None = None) -> list[dict]:
        with self.changed:
            return [m.body for m in self.log if start <= m.at <= end and kind in (None, m.body.get("type"))]

    def close(self) -> None:
        self._exit.close()
        self.receiver.join(timeout=5)


def decode(data: bytes, rate: int = 16000) -> np.ndarray:
    """Any audio file -> mono float32 at ``rate``, with PyAV (what a browser's decoder would do)."""
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pieces = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(audio=0)
            for out in resampler.resample(frame)
        ]
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def encode(samples: np.ndarray, rate: int, container_format: str, codec: str, codec_rate: int) -> bytes:
    """Mono float32 audio -> a file such as MediaRecorder's webm/opus or an MP3."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=codec_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=codec_rate)
        frame = av.AudioFrame.from_ndarray(np.frombuffer(float_to_pcm16(samples), np.int16)[None, :],
                                           format="s16", layout="mono")  # fmt: skip
        frame.sample_rate, frame.time_base, frame.pts = rate, fractions.Fraction(1, rate), 0
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(piece))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
