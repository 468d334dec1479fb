"""The lokutor SDK's own VoiceAgentClient (the reference client of seed 000) against voxloop, with
its sound card replaced by a file-backed microphone and a recording speaker."""

from __future__ import annotations

import threading
import time

import numpy as np
from lokutor import VoiceAgentClient

from tests.server import RunningServer
from tests.speech import espeak_16k
from voxloop.audio.pcm import float_to_pcm16

MIC_FRAME = 640  # the SDK's 20 ms at 16 kHz, in bytes


class FileAudio:
    """Stands in for the SDK's PyAudio device: a real-time microphone reading queued speech (then
    silence), and a speaker that records what it is asked to play."""

    def __init__(self) -> None:
        self.pending = b""
        self.played = bytearray()
        self.clears = 0
        self.next_at = time.monotonic()
        self.lock = threading.Lock()

    def say(self, audio: np.ndarray) -> None:
        with self.lock:
            self.pending += float_to_pcm16(audio)

    def start_input(self) -> None: ...

    def start_output(self) -> None: ...

    def read(self) -> bytes:
        self.next_at += 0.02
        time.sleep(max(0.0, self.next_at - time.monotonic()))
        with self.lock:
            chunk, self.pending = self.pending[:MIC_FRAME], self.pending[MIC_FRAME:]
        return chunk.ljust(MIC_FRAME, b"\0")

    def write(self, data: bytes) -> None:
        self.played += data

    def clear_output(self) -> None:
        self.clears += 1

    def wait_until_finished(self) -> None: ...

    def stop(self) -> None: ...


def test_voice_agent_client_holds_a_conversation(server: RunningServer) -> None:
    heard, replies, statuses = [], [], []
    client = VoiceAgentClient(
        api_key=server.api_key,
        prompt="You are a helpful assistant. Answer in one short sentence.",
        on_transcription=heard.append,
        on_response=replies.append,
        on_status=statuses.append,
    )
    client.server_url = f"{server.ws}/ws/agent"
    audio = FileAudio()
    client.audio = audio
    conversation = threading.Thread(target=client.start_conversation, daemon=True)
    conversation.start()
    try:
        assert client.config_done.wait(timeout=10), "no prompt_set from the server"
        audio.say(espeak_16k("What is the capital of Germany?"))
        deadline = time.monotonic() + 60
        while not replies and time.monotonic() < deadline:
            time.sleep(0.1)
        assert heard and "germany" in heard[0].lower(), heard
        assert replies and "berlin" in replies[0].lower(), replies
        assert {"thinking", "speaking"} <= set(statuses)
        assert client.current_generation >= 1
        assert len(audio.played) > 44100  # over half a second of reply at 44.1 kHz
    finally:
        client.running = False
        client.disconnect()
        conversation.join(timeout=5)
