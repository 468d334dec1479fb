"""A voice client for /ws/agent as a person's device would be: a microphone that streams in real
time, a speaker that plays what arrives (and clears on ``interrupted``), and optionally the
speaker leaking back into the microphone (no echo cancellation). Used by tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.microphone import SpeechQueue
from voxloop.audio.pcm import float_to_pcm16, pcm16_to_float

FRAME_S = 0.02


@dataclass
class Received:
    at: float
    message: dict | None = None  # JSON events
    audio: bytes = b""


@dataclass
class AgentClient:
    url: str
    rate: int = 16000  # microphone and playback rate (announced with "rates")
    echo_gain: float = 0.0  # speaker-to-microphone leak, e.g. 0.5 for -6 dB
    echo_delay_s: float = 0.15
    speed: float = 1.0  # microphone speed relative to real time (only without echo)
    log: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._exit = contextlib.ExitStack()
        self.ws: ClientConnection = self._exit.enter_context(connect(self.url, max_size=1 << 22))
        self._speaker: deque[np.ndarray] = deque()  # received reply audio waiting to be played
        self._echo_line = np.zeros(int(self.echo_delay_s * self.rate), dtype=np.float32)
        self._lock = threading.Lock()
        self._speech = SpeechQueue()
        self._running = True
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()
        self._mic = threading.Thread(target=self._stream_microphone, daemon=True)
        self.mic_started = time.monotonic()
        self._mic.start()

    # -- setup and speech --
    def configure(self, prompt: str, voice: str = "F1", language: str = "en", **extra: object) -> None:
        for kind, data in (("voice", voice), ("language", language), ("prompt", prompt), *extra.items()):
            self.ws.send(json.dumps({"type": kind, "data": data}))
        self.ws.send(json.dumps({"type": "metrics", "data": True}))
        self.ws.send(json.dumps({"type": "rates", "playback": self.rate, "input": self.rate}))

    def say(self, audio: np.ndarray) -> float:
        """Queues speech on the microphone; returns when its last sample has been sent (monotonic)."""
        return self._speech.say(audio)

    # -- what arrived --
    def events(self, kind: str | None = None, since: float = 0.0) -> list[dict]:
        with self._lock:
            return [
                r.message
                for r in self.log
                if r.message is not None and r.at >= since and (kind is None or r.message.get("type") == kind)
            ]

    def statuses(self, since: float = 0.0) -> list[str]:
        return [m["data"] for m in self.events("status", since)]

    def audio_between(self, start: float, end: float = float("inf")) -> np.ndarray:
        with self._lock:
            chunks = [pcm16_to_float(r.audio) for r in self.log if r.audio and start <= r.at < end]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def first_audio_after(self, start: float) -> float | None:
        with self._lock:
            return next((r.at for r in self.log if r.audio and r.at >= start), None)

    def wait_audio_after(self, start: float, timeout: float = 30.0) -> float:
        """When the first reply audio after ``start`` arrived, waiting for it."""
        deadline = time.monotonic() + timeout
        while (at := self.first_audio_after(start)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no audio in {timeout} s")
            time.sleep(0.02)
        return at

    def last_audio_time(self) -> float | None:
        with self._lock:
            return next((r.at for r in reversed(self.log) if r.audio), None)

    def wait_for(self, predicate, timeout: float = 60.0, since: float = 0.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.events(since=since):
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise TimeoutError(f"no matching event in {timeout} s; got {self.events(since=since)[-10:]}")

    def wait_status(self, status: str, since: float, timeout: float = 60.0) -> dict:
        return self.wait_for(lambda m: m.get("type") == "status" and m.get("data") == status, timeout, since)

    def wait_transcript(self, role: str, since: float, timeout: float = 60.0) -> dict:
        return self.wait_for(
            lambda m: m.get("type") == "transcript" and m.get("role") == role, timeout, since
        )

    def close(self) -> None:
        self._running = False
        self._mic.join(timeout=2)
        self._exit.close()
        self._receiver.join(timeout=5)

    # -- threads --
    def _receive(self) -> None:
        try:
            for message in self.ws:
                now = time.monotonic()
                with self._lock:
                    if isinstance(message, bytes):
                        self.log.append(Received(now, audio=message))
                        self._speaker.append(pcm16_to_float(message))
                    else:
                        event = json.loads(message)
                        self.log.append(Received(now, message=event))
                        if event.get("type") == "status" and event.get("data") == "interrupted":
                            self._speaker.clear()  # as the Lokutor docs ask of a client
        except ConnectionClosed:
            pass

    def _play(self, count: int) -> np.ndarray:
        """What the speaker plays during the next ``count`` samples."""
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        with self._lock:
            while filled < count and self._speaker:
                head = self._speaker[0]
                take = min(count - filled, len(head))
                out[filled : filled + take] = head[:take]
                filled += take
                if take == len(head):
                    self._speaker.popleft()
                else:
                    self._speaker[0] = head[take:]
        return out

    def _stream_microphone(self) -> None:
        frame = int(FRAME_S * self.rate)
        next_at = time.monotonic()
        while self._running:
            samples = self._speech.next_frame(frame)
            if self.echo_gain:
                played = self._play(frame)
                line = np.concatenate([self._echo_line, played])
                samples += self.echo_gain * line[:frame]
                self._echo_line = line[frame:]
            else:
                self._play(frame)
            try:
                self.ws.send(float_to_pcm16(samples))
            except ConnectionClosed:
                return
            next_at += FRAME_S / (1.0 if self.echo_gain else self.speed)
            time.sleep(max(0.0, next_at - time.monotonic()))
