"""The Lokutor TTS and STT endpoints on a real server with real models, driven by the lokutor SDK
where it covers the case and by a raw WebSocket client for the rest (bad input, framing)."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import numpy as np
import pytest
from lokutor import STTClient, TTSClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.server import RunningServer
from tests.speech import espeak_wav, pocketsphinx_samples, word_error_rate
from voxloop.audio.pcm import float_to_pcm16, pcm16_to_float, resample, write_wav

RATE = 44100
FRAME_40MS = 2 * RATE * 40 // 1000


def tts_client(server: RunningServer, key: str | None = None) -> TTSClient:
    client = TTSClient(api_key=key or server.api_key)
    client.server_url = f"{server.ws}/ws/tts"
    return client


def stt_client(server: RunningServer) -> STTClient:
    return STTClient(api_key=server.api_key, server_url=f"{server.ws}/ws/stt")


def synthesize(server: RunningServer, request: dict, path: str = "/ws") -> tuple[bytes, list, list[str]]:
    """Raw client: returns (audio, viseme arrays, text frames) of one request."""
    audio, visemes, texts = bytearray(), [], []
    with connect(f"{server.ws}{path}?api_key={server.api_key}") as ws:
        ws.send(json.dumps(request))
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                assert len(message) <= FRAME_40MS and len(message) % 2 == 0
                audio += message
                continue
            texts.append(message)
            if message == "EOS" or message.startswith("ERR"):
                break
            visemes.append(json.loads(message))
    return bytes(audio), visemes, texts


def transcribe_pcm(server: RunningServer, pcm: bytes, rate: int, language: str | None = "en") -> str:
    return stt_client(server).transcribe(pcm, format="pcm16", sample_rate=rate, language=language)["text"]


@pytest.mark.parametrize("voice", ["F1", "M1"])
def test_sdk_tts_speaks_the_words(server: RunningServer, voice: str) -> None:
    audio = bytearray()
    ttfb: list[float] = []
    tts_client(server).synthesize(
        "The quick brown fox jumps over the lazy dog.",
        voice=voice,
        play=False,
        on_audio=audio.extend,
        on_ttfb=ttfb.append,
    )
    assert ttfb, "no audio arrived"
    seconds = len(audio) / 2 / RATE
    assert 1.0 < seconds < 6.0
    text = transcribe_pcm(server, bytes(audio), RATE).lower()
    assert "fox" in text and "dog" in text, text


def test_tts_streams_sentences_visemes_and_reuses_the_connection(server: RunningServer) -> None:
    text = "Good morning. The weather is sunny today. Would you like to go for a walk?"
    with connect(f"{server.ws}/ws?api_key={server.api_key}") as ws:
        for _ in range(2):  # the connection stays open for the next request
            ws.send(json.dumps({"text": text, "voice": "F2", "lang": "en", "visemes": True}))
            frames, arrays, first_audio_at_array = 0, [], None
            while (message := ws.recv(timeout=60)) != "EOS":
                if isinstance(message, bytes):
                    frames += 1
                    first_audio_at_array = first_audio_at_array or len(arrays)
                else:
                    arrays.append(json.loads(message))
            assert frames > 50  # several seconds in 40 ms frames
            assert len(arrays) >= 3, "one viseme array per sentence"
            assert first_audio_at_array == 1, "audio of sentence one is sent before sentence two is ready"
            times = [v["t"] for array in arrays for v in array]
            assert times == sorted(times) and times[-1] < frames * 0.04 + 0.1
            assert all(
                set(v) == {"v", "c", "t"} and isinstance(v["v"], int) for array in arrays for v in array
            )


def test_speed_changes_duration_on_every_engine(server: RunningServer) -> None:
    for voice, lang in (("F1", "en"), ("M1", "en"), ("F1", "es")):
        request = {
            "text": "uno dos tres cuatro cinco" if lang == "es" else "one two three four five",
            "voice": voice,
            "language": lang,
        }
        slow, _, _ = synthesize(server, {**request, "speed": 0.7})
        fast, _, _ = synthesize(server, {**request, "speed": 1.6})
        assert len(fast) < 0.8 * len(slow), (voice, lang)


def test_spanish_voice_is_understood(server: RunningServer) -> None:
    audio, _, texts = synthesize(
        server, {"text": "Buenos días, me llamo Carlos.", "voice": "M1", "lang": "es"}
    )
    assert texts[-1] == "EOS"
    text = transcribe_pcm(server, audio, RATE, language="es").lower()
    assert "carlos" in text, text


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("not json", "not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"voice": "F1"}), "'text'"),
        (json.dumps({"text": "   "}), "empty"),
        (json.dumps({"text": "x" * 6000}), "too long"),
        (json.dumps({"text": 42}), "'text'"),
        (json.dumps({"text": "hi", "voice": "Z9"}), "voice"),
        (json.dumps({"text": "hi", "lang": "xx"}), "language"),
        (json.dumps({"text": "hi", "speed": "fast"}), "'speed'"),
        (json.dumps({"text": "hi", "speed": 50}), "'speed'"),
        (json.dumps({"text": "hi", "visemes": "yes"}), "'visemes'"),
        (b"\x00\x01binary", "binary"),
    ],
)
def test_tts_bad_input_gets_err_and_connection_survives(
    server: RunningServer, payload, expected: str
) -> None:
    with connect(f"{server.ws}/ws/tts", additional_headers={"X-API-Key": server.api_key}) as ws:
        ws.send(payload)
        answer = ws.recv(timeout=30)
        assert isinstance(answer, str) and answer.startswith("ERR: ") and expected in answer, answer
        ws.send(json.dumps({"text": "Still here."}))
        messages = []
        while (message := ws.recv(timeout=30)) != "EOS":
            messages.append(message)
        assert any(isinstance(m, bytes) for m in messages)


@pytest.mark.parametrize("path", ["/ws", "/ws/tts", "/ws/stt", "/ws/agent"])
def test_websockets_refuse_missing_or_wrong_key(server: RunningServer, path: str) -> None:
    """Refused at the handshake with HTTP 401 and a JSON body (seed 001), never accepted."""
    for suffix in ("", "?api_key=wrong"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{server.ws}{path}{suffix}")
        response = refused.value.response
        assert response.status_code == 401
        assert json.loads(response.body)["error"]["type"] == "unauthorized"


def test_sdk_stt_transcribes_human_recordings(server: RunningServer) -> None:
    client = stt_client(server)
    errors, words = 0.0, 0
    # librivox: read speech without digits (the cards set says "ten", Whisper writes "10")
    for path, reference in [s for s in pocketsphinx_samples() if "librivox" in str(s[0])][:3]:
        result = client.transcribe(path.read_bytes() if path.suffix == ".wav" else _wav_of_raw(path))
        assert {
            "text",
            "latency_ms",
            "engine",
            "sample_rate",
            "language",
            "duration_seconds",
            "segments",
        } <= set(result)
        assert result["duration_seconds"] > 0.5 and result["segments"]
        count = len(reference.split())
        errors += word_error_rate(reference, result["text"]) * count
        words += count
    assert errors / words < 0.2


def _wav_of_raw(path) -> bytes:
    return write_wav(pcm16_to_float(path.read_bytes()), 16000)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"audio": "%%%not base64%%%"}, 400, "invalid_audio"),
        ({"format": "wav"}, 400, "invalid_request"),
        ({"audio": base64.b64encode(b"RIFFjunk").decode()}, 400, "invalid_audio"),
        ({"audio": base64.b64encode(b"\x00\x00" * 100).decode(), "format": "pcm16"}, 400, "invalid_audio"),
        (
            {"audio": base64.b64encode(b"\x00" * 101).decode(), "format": "pcm16", "sample_rate": 16000},
            400,
            "invalid_audio",
        ),
        ({"audio": base64.b64encode(b"\x00\x00" * 100).decode(), "format": "mp9"}, 400, "invalid_request"),
        (
            {
                "audio": base64.b64encode(b"\x00\x00" * 100).decode(),
                "format": "pcm16",
                "sample_rate": 16000,
                "language": "klingon",
            },
            400,
            "invalid_request",
        ),
    ],
)
def test_stt_transcribe_bad_input(server: RunningServer, body: dict, status: int, kind: str) -> None:
    response = httpx.post(f"{server.http}/stt/transcribe", json=body, headers={"X-API-Key": server.api_key})
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind


def test_http_refuses_bad_keys_bodies_and_sizes(server: RunningServer) -> None:
    url = f"{server.http}/stt/transcribe"
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"X-API-Key": "nope"}).json()["error"]["type"] == "unauthorized"
    headers = {"X-API-Key": server.api_key}
    assert httpx.post(url, content=b"{not json", headers=headers).status_code == 400
    assert httpx.post(url, content=b"x" * (41 << 20), headers=headers).status_code == 413
    assert httpx.get(f"{server.http}/healthz").json()["status"] == "ok"


def test_voice_and_language_catalogue(server: RunningServer) -> None:
    headers = {"X-API-Key": server.api_key}
    languages = httpx.get(f"{server.http}/languages", headers=headers).json()["languages"]
    assert {"en", "es", "fr", "pt", "ko"} <= {entry["code"] for entry in languages}
    voices = httpx.get(f"{server.http}/voices", headers=headers).json()["voices"]
    ids = {voice["id"] for voice in voices}
    assert {f"F{i}" for i in range(1, 6)} | {f"M{i}" for i in range(1, 6)} <= ids


def stream_speech(ws, audio16k: np.ndarray, speed: float = 4.0) -> None:
    """Sends 20 ms PCM16 frames, ``speed`` times faster than real time."""
    pcm = float_to_pcm16(audio16k)
    for start in range(0, len(pcm), 640):
        ws.send(pcm[start : start + 640])
        time.sleep(0.02 / speed)


def test_ws_stt_partials_then_final(server: RunningServer) -> None:
    speech, rate = espeak_wav("Please book a table for four people at seven tonight in the garden")
    audio = np.concatenate(
        [np.zeros(8000, np.float32), resample(speech, rate, 16000), np.zeros(16000, np.float32)]
    )
    with connect(f"{server.ws}/ws/stt?api_key={server.api_key}") as ws:
        ws.send(json.dumps({"language": "en", "vad": "silero"}))
        sender = threading.Thread(target=stream_speech, args=(ws, audio, 2.0))
        sender.start()
        messages = []
        while True:
            message = json.loads(ws.recv(timeout=30))
            messages.append(message)
            if message.get("isFinal"):
                break
        sender.join()
        partials = [m for m in messages if m["type"] == "transcript" and not m["isFinal"]]
        assert partials, "partial transcripts while speaking"
        assert "table" in messages[-1]["data"].lower() and "garden" in messages[-1]["data"].lower()
        # odd-length PCM and unknown messages are errors; the stream goes on
        ws.send(b"\x00\x00\x00")
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        ws.send(json.dumps({"type": "dance"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        stream_speech(ws, resample(espeak_wav("hello there my friend")[0], rate, 16000))
        ws.send(json.dumps({"type": "end"}))  # forces the final before the silence
        final = json.loads(ws.recv(timeout=30))
        while not final.get("isFinal"):
            final = json.loads(ws.recv(timeout=30))
        assert "friend" in final["data"].lower()


def test_ws_stt_rejects_bad_opening(server: RunningServer) -> None:
    for opening in ("nope", json.dumps({"language": "xx"}), json.dumps({"sample_rate": 12345})):
        with connect(f"{server.ws}/ws/stt?api_key={server.api_key}") as ws:
            ws.send(opening)
            assert json.loads(ws.recv(timeout=10))["type"] == "error"


def test_metrics_exposes_latency(server: RunningServer) -> None:
    synthesize(server, {"text": "Metrics please."})
    body = httpx.get(f"{server.http}/metrics").text
    assert "voxloop_tts_first_audio_seconds_count" in body


def test_api_keys_stay_out_of_the_log(server: RunningServer) -> None:
    synthesize(server, {"text": "Quiet please."})  # connects with ?api_key= in the URL
    assert "api_key=***" in server.log() and f"api_key={server.api_key}" not in server.log()
