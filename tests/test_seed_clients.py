"""The seeds' own example clients, used as their docs show them, against a real server.

- SelamGPT (seed 002): `mekdes` / `am`, MediaRecorder WebM/Opus chunks labelled `pcm16`, every
  `audio_chunk` played the moment it arrives.
- Lokutor's raw-API voice-agent example (lokutor-ai/lokutor_examples,
  usage/api/voice_agent/python/main.py): prompt, voice and language messages, then a 16 kHz
  microphone in 2048-sample reads at real-time pace, declaring no rate; reply PCM at 44.1 kHz.
- Lokutor's TTS socket (seed 001) with a request that names no voice: M1.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
from websockets.sync.client import connect

from tests.selam_client import SelamClient
from tests.server import RunningServer
from tests.speech import espeak_16k, normalize_words
from tests.test_seed_clients_parts import media_recorder_chunks, webm_opus
from voxloop.audio.codec import decode_audio
from voxloop.audio.pcm import float_to_pcm16, pcm16_to_float, resample

AMHARIC_QUESTION = "የኢትዮጵያ ዋና ከተማ ማን ናት?"  # "What is the capital of Ethiopia?"
OVERLAP_TOLERANCE_S = 0.06  # socket and thread jitter between two arrivals on this machine


def mp3_seconds(chunk: dict) -> float:
    return len(decode_audio(base64.b64decode(chunk["audio"]), "mp3")) / 16000


def test_selam_seed_example_in_amharic_from_a_media_recorder(server: RunningServer) -> None:
    client = SelamClient(server.http, server.api_key, voice="mekdes").connect()
    try:
        client.wait("connected")
        assert not client.errors()  # the voice in the URL is taken
        started = client.start(
            voice="mekdes",
            language="am",
            instructions="You are a helpful voice assistant.",
            vad_threshold=600,
            interrupt_threshold=8,
        )
        assert started["language"] == "am" and started["voice"] == "mekdes"
        speech = espeak_16k(AMHARIC_QUESTION, "am")
        recording = np.concatenate([np.zeros(4000, np.float32), speech, np.zeros(24000, np.float32)])
        sent = time.monotonic()
        client.send_stream(media_recorder_chunks(webm_opus(recording)))
        # Whisper base hears eSpeak's Amharic poorly (docs/selam.md: CER above 1): the turn is
        # transcribed and answered, its words are not checked.
        heard = client.wait("transcription", sent, 60, where=lambda data: data.get("is_final"))
        assert heard["text"].strip(), heard
        assert not client.errors(sent)

        end = client.wait_event("audio_end", sent, 120)
        chunks = client.events("audio_chunk", sent, end.at + 0.001)
        assert chunks and end.data["total_chunks"] == len(chunks) and not end.data["interrupted"]
        audio = np.concatenate([decode_audio(base64.b64decode(e.data["audio"]), "mp3") for e in chunks])
        assert np.sqrt(np.mean(audio**2)) > 0.01  # spoken, not silence
        assert_no_overlap(chunks)

        # A reply of several sentences, for the pacing between chunks.
        since = client.emit("end_session")
        client.wait("session_ended", since)
        client.start(voice="alloy", language="en", instructions=STORYTELLER)
        question = espeak_16k("Tell me a story about a dragon.")
        sent = time.monotonic()
        client.send_stream(media_recorder_chunks(webm_opus(np.concatenate([question, np.zeros(24000)]))))
        end = client.wait_event("audio_end", sent, 120)
        chunks = client.events("audio_chunk", sent, end.at + 0.001)
        assert len(chunks) >= 2, client.summary(sent)
        assert_no_overlap(chunks)
    finally:
        client.close()


STORYTELLER = "You are a storyteller. Tell stories of at least four sentences."


def assert_no_overlap(chunks: list) -> None:
    """Played on arrival (`new Audio(...).play()`): a chunk never arrives before the one before it
    has (nearly) finished, so no two overlap. Prints the gaps (silence between two chunks)."""
    plays_until, gaps = 0.0, []
    for index, event in enumerate(chunks):
        assert event.at >= plays_until - OVERLAP_TOLERANCE_S, (index, event.at - plays_until)
        if index:
            gaps.append(event.at - plays_until)
        plays_until = max(plays_until, event.at) + mp3_seconds(event.data)
    print(f"play on arrival: {len(chunks)} chunks, arrival minus previous end (s): {np.round(gaps, 3)}")


def test_lokutor_raw_api_example_with_an_undeclared_16k_microphone(server: RunningServer) -> None:
    question = "What is the capital of France?"
    speech = espeak_16k(question)
    microphone = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(40000, np.float32)])
    received: list[tuple[float, str | bytes]] = []
    with connect(f"{server.ws}/ws/agent?api_key={server.api_key}") as ws:
        # on_open: the initialisation sequence, then the microphone thread.
        ws.send(
            json.dumps(
                {"type": "prompt", "data": "You are a helpful and natural conversational AI assistant."}
            )
        )
        ws.send(json.dumps({"type": "voice", "data": "F1"}))
        ws.send(json.dumps({"type": "language", "data": "en"}))

        hung_up = threading.Event()  # the test has its answer and closes the socket

        def mic_stream() -> None:
            read = 2048  # CHUNK_SIZE: one input_stream.read() returns once 2048 samples are captured
            next_at = time.monotonic()
            for start in range(0, len(microphone) - read + 1, read):
                next_at += read / 16000
                if hung_up.wait(max(0.0, next_at - time.monotonic())):
                    return
                ws.send(float_to_pcm16(microphone[start : start + read]))

        mic = threading.Thread(target=mic_stream, daemon=True)
        mic.start()
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                try:
                    message = ws.recv(timeout=1)
                except TimeoutError:
                    continue
                received.append((time.monotonic(), message))
                if isinstance(message, str) and json.loads(message).get("type") == "status":
                    if json.loads(message)["data"] == "listening" and any(
                        isinstance(m, bytes) for _, m in received
                    ):
                        break
        finally:
            hung_up.set()
            mic.join()  # before the close: the example's microphone stops with its socket
    messages = [json.loads(m) for _, m in received if isinstance(m, str)]
    assert not [m for m in messages if m["type"] == "error"], messages
    user = [m["data"] for m in messages if m["type"] == "transcript" and m["role"] == "user"]
    assert user and "capital" in normalize_words(user[0]) and "france" in normalize_words(user[0]), user
    assistant = [m["data"] for m in messages if m["type"] == "transcript" and m["role"] == "assistant"]
    assert any("paris" in normalize_words(text) for text in assistant), messages
    reply = pcm16_to_float(b"".join(m for _, m in received if isinstance(m, bytes)))
    assert len(reply) > 0.5 * 44100 and np.sqrt(np.mean(reply**2)) > 0.01  # a spoken answer at 44.1 kHz


def pitch_hz(audio: np.ndarray, rate: int) -> float:
    """Median F0 of the voiced 40 ms frames, by autocorrelation (70-400 Hz)."""
    audio = resample(audio, rate, 16000)
    frame, found = 640, []
    for start in range(0, len(audio) - frame, frame):
        x = audio[start : start + frame]
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        x = x - x.mean()
        corr = np.correlate(x, x, "full")[frame - 1 :]
        low, high = 16000 // 400, 16000 // 70
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.3 * corr[0]:
            found.append(16000 / lag)
    return float(np.median(found))


def test_tts_socket_speaks_m1_when_no_voice_is_named(server: RunningServer) -> None:
    def speak(request: dict) -> np.ndarray:
        with connect(f"{server.ws}/ws/tts?api_key={server.api_key}") as ws:
            ws.send(json.dumps(request))
            pcm = b""
            while (message := ws.recv(timeout=30)) != "EOS":
                assert not (isinstance(message, str) and message.startswith("ERR")), message
                pcm += message if isinstance(message, bytes) else b""
        return pcm16_to_float(pcm)

    text = "Good morning, this is the default voice of the speech socket."
    default = pitch_hz(speak({"text": text, "steps": 10, "version": "versa-1.0"}), 44100)
    male, female = (pitch_hz(speak({"text": text, "voice": v}), 44100) for v in ("M1", "F1"))
    assert male < female
    assert abs(default - male) < abs(default - female), (default, male, female)
