"""A SelamGPT voice-agent client as an app would write it with python-socketio: websocket
transport, namespace /v1/audio/agent, base64 PCM16 microphone chunks paced in real time.
Records every event with its arrival time. Used by tests and bench/bench_selam.py."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import socketio

from voxloop.audio.codec import decode_audio
from voxloop.audio.pcm import float_to_pcm16

NAMESPACE = "/v1/audio/agent"
RATE = 16000


@dataclass
class Event:
    at: float
    name: str
    data: Any


@dataclass
class SelamClient:
    url: str  # http://host:port
    api_key: str | None
    voice: str | None = "alloy"
    headers: dict[str, str] | None = None  # e.g. a browser's Origin (websocket-client sets its own)
    transports: tuple[str, ...] = ("websocket",)
    log: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sio = socketio.Client(reconnection=False)
        self._lock = threading.Lock()
        self.connect_error: Any = None
        for name in ("connect", "disconnect"):
            self.sio.on(name, self._recorder(name), namespace=NAMESPACE)
        self.sio.on("connect_error", self._connect_error, namespace=NAMESPACE)
        self.sio.on("*", self._any, namespace=NAMESPACE)

    def _recorder(self, name: str):
        def record(*args: Any) -> None:
            self._record(name, args[0] if args else None)

        return record

    def _connect_error(self, data: Any = None) -> None:
        self.connect_error = data
        self._record("connect_error", data)

    def _any(self, event: str, data: Any = None) -> None:
        self._record(event, data)

    def _record(self, name: str, data: Any) -> None:
        with self._lock:
            self.log.append(Event(time.monotonic(), name, data))

    # -- connection --
    def connect(self) -> SelamClient:
        query = "&".join(
            f"{k}={v}" for k, v in (("api_key", self.api_key), ("voice", self.voice)) if v is not None
        )
        self.sio.connect(
            f"{self.url}?{query}",
            headers=self.headers or {},
            namespaces=[NAMESPACE],
            transports=list(self.transports),
            wait_timeout=20,
        )
        return self

    def close(self) -> None:
        self.sio.disconnect()

    def emit(self, event: str, data: Any = None) -> float:
        sent = time.monotonic()
        if data is None:
            self.sio.emit(event, namespace=NAMESPACE)
        else:
            self.sio.emit(event, data, namespace=NAMESPACE)
        return sent

    def start(self, **options: Any) -> dict:
        since = self.emit("start_session", options)
        return self.wait("session_started", since=since)

    # -- speech --
    def send_pcm(self, audio: np.ndarray, chunk_ms: int = 30, speed: float = 1.0) -> float:
        """Streams 16 kHz audio in real time (``speed`` times faster); returns when the last chunk left."""
        step = RATE * chunk_ms // 1000
        next_at = time.monotonic()
        for start in range(0, len(audio), step):
            pcm = float_to_pcm16(audio[start : start + step])
            self.emit(
                "audio_chunk",
                {"audio": base64.b64encode(pcm).decode(), "format": "pcm16", "sample_rate": RATE},
            )
            next_at += chunk_ms / 1000 / speed
            time.sleep(max(0.0, next_at - time.monotonic()))
        return time.monotonic()

    def send_stream(self, chunks: list[bytes], chunk_ms: int = 100) -> float:
        """Streams a recording as SelamGPT's browser example does: MediaRecorder chunks (the
        first with the WebM header) every ``chunk_ms`` in real time, labelled ``pcm16`` as the
        example labels them; returns when the last chunk left."""
        next_at = time.monotonic()
        for chunk in chunks:
            next_at += chunk_ms / 1000
            time.sleep(max(0.0, next_at - time.monotonic()))  # the recorder hands a chunk out at its end
            audio = base64.b64encode(chunk).decode()
            self.emit("audio_chunk", {"audio": audio, "format": "pcm16", "sample_rate": RATE})
        return time.monotonic()

    def say(self, speech: np.ndarray, silence_s: float = 1.0, chunk_ms: int = 30) -> float:
        """Speaks ``speech`` then ``silence_s`` of silence; returns when its last voiced sample left."""
        ended = self.send_pcm(speech, chunk_ms)
        self.send_pcm(np.zeros(int(silence_s * RATE), np.float32), chunk_ms)
        return ended

    # -- what arrived --
    def events(self, name: str | None = None, since: float = 0.0, until: float = float("inf")) -> list[Event]:
        with self._lock:
            return [e for e in self.log if since <= e.at < until and (name is None or e.name == name)]

    def wait(self, name: str, since: float = 0.0, timeout: float = 60.0, where=lambda data: True) -> dict:
        return self.wait_event(name, since, timeout, where).data

    def wait_event(
        self, name: str, since: float = 0.0, timeout: float = 60.0, where=lambda data: True
    ) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(name, since):
                if where(event.data):
                    return event
            time.sleep(0.02)
        raise TimeoutError(f"no {name!r} in {timeout} s; last events: {self.summary(since)}")

    def summary(self, since: float = 0.0) -> list[tuple[str, str]]:
        return [(e.name, str(e.data)[:120]) for e in self.events(since=since)[-15:]]

    def errors(self, since: float = 0.0) -> list[dict]:
        return [e.data for e in self.events("error", since)]

    def wait_error(self, kind: str, since: float, timeout: float = 10.0) -> dict:
        return self.wait("error", since, timeout, where=lambda data: data.get("type") == kind)

    def reply_audio(self, since: float, until: float = float("inf")) -> tuple[np.ndarray, list[dict]]:
        """Every MP3 chunk received in the window, each decoded on its own, joined (16 kHz)."""
        chunks = [e.data for e in self.events("audio_chunk", since, until)]
        decoded = [decode_audio(base64.b64decode(chunk["audio"]), "mp3") for chunk in chunks]
        return (np.concatenate(decoded) if decoded else np.zeros(0, np.float32)), chunks
