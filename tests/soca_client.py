"""A Soca voice-ws client as the Soca docs' example client behaves: a start message, then a
microphone streaming 20 ms PCM16 frames in real time; received messages are logged with their
arrival time, and ``current_seq`` follows the docs' rule (a higher seq stops older audio).
The speaker is not fed back into the microphone: no echo. Used by tests and the benchmark."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.microphone import SpeechQueue
from voxloop.audio.pcm import float_to_pcm16

FRAME_S = 0.02
RATE = 16000


@dataclass
class Received:
    at: float
    message: dict


@dataclass
class SocaClient:
    url: str
    start: dict
    speed: float = 1.0  # microphone speed relative to real time
    log: list[Received] = field(default_factory=list)
    current_seq: int = 0

    def __post_init__(self) -> None:
        self._exit = contextlib.ExitStack()
        self.ws: ClientConnection = self._exit.enter_context(connect(self.url, max_size=1 << 24))
        self.ws.send(json.dumps(self.start))
        self._lock = threading.Lock()
        self._speech = SpeechQueue()
        self._running = True
        self.stale: list[dict] = []  # messages of a seq lower than one already seen: must stay empty
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()
        self.ready = self.wait_for(lambda m: m.get("type") in ("ready", "error"), timeout=30)
        self._mic = threading.Thread(target=self._stream_microphone, daemon=True)
        self._mic.start()

    def say(self, audio: np.ndarray, silence_s: float = 0.1) -> float:
        """Queues speech (16 kHz float) on the microphone; returns when it has been sent."""
        tail = np.zeros(int(silence_s * RATE), dtype=np.float32)
        return self._speech.say(np.concatenate([audio.astype(np.float32), tail]))

    def messages(self, since: float = 0.0, kind: str | None = None, step: str | None = None) -> list[dict]:
        with self._lock:
            return [
                r.message
                for r in self.log
                if r.at >= since
                and (kind is None or r.message.get("type") == kind)
                and (step is None or r.message.get("stepType") == step)
            ]

    def received_at(self, message: dict) -> float:
        with self._lock:
            return next(r.at for r in self.log if r.message is message)

    def wait_for(self, predicate, timeout: float = 90.0, since: float = 0.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages(since):
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise TimeoutError(f"no matching message in {timeout} s; got {summary(self.messages(since))[-12:]}")

    def final_answer(self, since: float, timeout: float = 120.0) -> dict:
        return self.wait_for(lambda m: m.get("stepType") == "final_answer", timeout, since)

    def wait_closed(self, timeout: float = 10.0) -> int | None:
        """The close code once the server has closed the connection."""
        self._receiver.join(timeout)
        return self.ws.close_code

    def close(self) -> None:
        self._running = False
        self._mic.join(timeout=2)
        self._exit.close()
        self._receiver.join(timeout=5)

    def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for raw in self.ws:
                message = json.loads(raw)
                with self._lock:
                    self.log.append(Received(time.monotonic(), message))
                    seq = message.get("seq")
                    if isinstance(seq, int):
                        if seq < self.current_seq:
                            self.stale.append(message)
                        self.current_seq = max(self.current_seq, seq)

    def _stream_microphone(self) -> None:
        frame = int(FRAME_S * RATE)
        next_at = time.monotonic()
        while self._running:
            samples = self._speech.next_frame(frame)
            try:
                self.ws.send(float_to_pcm16(samples))
            except ConnectionClosed:
                return
            next_at += FRAME_S / self.speed
            time.sleep(max(0.0, next_at - time.monotonic()))


def summary(messages: list[dict]) -> list[dict]:
    """Messages without their audio, for assertion messages."""
    return [{k: v for k, v in m.items() if k != "audio"} for m in messages]
