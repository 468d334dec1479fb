"""The VoiceAgent SDK protocol (/v1/voice-agent, /v1/video-agent) on a real server with real models,
driven by a real WebSocket client: typed and recorded questions, streamed text, spoken chunks
transcribed back, server-side tools, interrupts, video frames and bad input."""

from __future__ import annotations

import base64
import fractions
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server import RunningServer, start_server
from tests.speech import espeak_wav, normalize_words, word_error_rate
from tests.voice_agent_client import VoiceAgentClient, b64, decode, encode
from voxloop.audio.pcm import float_to_pcm16
from voxloop.engine.tools import builtin_tools
from voxloop.protocols.voice_agent.frames import MAX_FRAME_BYTES, FrameRejected, parse_frame, sniff
from voxloop.protocols.voice_agent.wire import audio_format

QUESTION = "What is the capital of France?"
STORY = "Tell me a very long story about a dragon and a knight, with at least ten sentences."


def client(server: RunningServer, path: str = "/v1/voice-agent") -> VoiceAgentClient:
    return VoiceAgentClient(f"{server.ws}{path}?api_key={server.api_key}")


@pytest.fixture
def voice(server: RunningServer) -> Iterator[VoiceAgentClient]:
    agent = client(server)
    yield agent
    agent.close()


def transcribe(server: RunningServer, audio: np.ndarray) -> str:
    response = httpx.post(
        f"{server.http}/stt/transcribe",
        headers={"X-API-Key": server.api_key},
        json={"audio": b64(float_to_pcm16(audio)), "format": "pcm16", "sample_rate": 16000, "language": "en"},
        timeout=60,
    )
    return response.json()["text"]


def reply_messages(agent: VoiceAgentClient, since: float, timeout: float = 120) -> list[dict]:
    """Everything from ``since`` to the reply's response_complete."""
    done = agent.wait_type("response_complete", since, timeout)
    return agent.between(since, done.at)


def image(codec: str, width: int = 64, height: int = 48, pix: str = "yuv420p") -> bytes:
    """A real image file from FFmpeg's encoders (mjpeg, png, libwebp)."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height, context.pix_fmt = width, height, pix
    context.time_base = fractions.Fraction(1, 25)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=pix)
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


def png_header(width: int, height: int) -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def frame_message(data: bytes, fmt: str, sequence: int) -> dict:
    picture = {"data": b64(data), "format": fmt, "width": 64, "height": 48}
    return {
        "type": "video_frame", "sessionId": "client-main", "sequence": sequence,
        "timestamp": 1700000000000, "triggerReason": "user_request", "image": picture,
    }  # fmt: skip


# ---- without a server -------------------------------------------------------------------


def test_audio_format_accepts_short_names_and_mime_types() -> None:
    assert audio_format("audio/webm;codecs=opus") == "webm"
    assert audio_format("audio/ogg; codecs=opus") == "ogg"
    assert audio_format("audio/mpeg") == "mp3"
    assert audio_format("MP3") == "mp3"
    assert audio_format("audio/wav") == audio_format("wav") == "wav"
    assert audio_format(None) is None and audio_format("unknown") is None  # sniffed from the bytes
    with pytest.raises(ValueError):
        audio_format("audio/x-nonsense")
    with pytest.raises(ValueError):
        audio_format(42)


def test_frames_are_recognised_from_their_headers() -> None:
    assert sniff(image("mjpeg", pix="yuvj420p")) == ("jpeg", 64, 48)
    assert sniff(image("png", pix="rgb24")) == ("png", 64, 48)
    assert sniff(image("libwebp")) == ("webp", 64, 48)
    frame = parse_frame(frame_message(image("libwebp"), "image/webp", 7))
    assert frame.sequence == 7 and frame.data_url.startswith("data:image/webp;base64,")
    rejected = {
        "bad_format": frame_message(b"GIF89a" + bytes(100), "webp", 1),
        "frame_too_large": frame_message(bytes(MAX_FRAME_BYTES + 1), "webp", 2),
        "bad_dimensions": frame_message(png_header(10000, 10), "png", 3),
        "bad_frame": {"type": "video_frame", "image": {"data": "***", "format": "png"}},
    }
    for code, message in rejected.items():
        with pytest.raises(FrameRejected) as info:
            parse_frame(message)
        assert info.value.code == code
    with pytest.raises(FrameRejected, match="says jpeg"):
        parse_frame(frame_message(image("png", pix="rgb24"), "jpeg", 4))


async def test_server_tools_ignore_arguments_they_do_not_take() -> None:
    """Qwen 0.5B calls get_current_time with the schema as its arguments ({"type": "object", ...})."""
    result = await builtin_tools.subset(["get_current_time"]).call("get_current_time", {"type": "object"})
    assert "error" not in result and str(time.localtime().tm_year) in result


# ---- on a real server -------------------------------------------------------------------


def test_typed_question_streams_text_and_spoken_chunks(
    server: RunningServer, voice: VoiceAgentClient
) -> None:
    latencies = []
    for _ in range(2):
        sent = voice.ask(QUESTION)
        messages = reply_messages(voice, sent)
        kinds = [m["type"] for m in messages]
        first_audio = voice.wait_type("audio_chunk", sent)
        latencies.append(first_audio.at - sent)
        deltas = [m for m in messages if m["type"] == "text_delta"]
        chunks = [m for m in messages if m["type"] == "audio_chunk"]
        complete = messages[-1]
        assert deltas and chunks, kinds
        assert all(isinstance(m["id"], str) and m["id"] for m in deltas)
        text = "".join(m["text"] for m in deltas)
        assert complete["text"] == text.strip() and "paris" in text.lower(), complete
        assert kinds.index("speech_stream_start") < kinds.index("audio_chunk")
        assert kinds.index("speech_stream_end") < kinds.index("response_complete")
        assert "speech_interrupted" not in kinds
        finish = next(m for m in messages if m["type"] == "stream_finish")
        assert finish["finishReason"] in ("stop", "length"), finish
        usage = finish["usage"]
        assert usage["inputTokens"] > 10 and usage["outputTokens"] >= len(text.split()) // 2, usage
        assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
        ids = [m["chunkId"] for m in chunks]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(m["format"] == "mp3" for m in chunks)
        spoken_text = " ".join(m["text"] for m in chunks)
        assert word_error_rate(text, spoken_text) == 0.0, (text, spoken_text)  # every word is spoken
        audio = np.concatenate([decode(base64.b64decode(m["data"])) for m in chunks])
        heard = transcribe(server, audio)
        assert word_error_rate(spoken_text, heard) <= 0.35, (spoken_text, heard)
    print(f"typed question -> first audio chunk: {[round(s, 2) for s in latencies]} s")


def test_wav_chunks_on_request_and_unknown_output_formats_refused(server: RunningServer) -> None:
    wav = VoiceAgentClient(f"{server.ws}/v1/voice-agent?api_key={server.api_key}&format=wav")
    try:
        sent = wav.ask("Say hello.")
        chunks = [m for m in reply_messages(wav, sent) if m["type"] == "audio_chunk"]
        assert chunks and all(m["format"] == "wav" for m in chunks)
        data = base64.b64decode(chunks[0]["data"])
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and decode(data).size > 1600
    finally:
        wav.close()
    with connect(f"{server.ws}/v1/voice-agent?api_key={server.api_key}&format=flac") as ws:
        assert "format" in json.loads(ws.recv(timeout=10))["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


@pytest.mark.parametrize(
    ("container", "codec", "rate", "fmt"),
    [("webm", "libopus", 48000, "audio/webm;codecs=opus"), ("mp3", "libmp3lame", 22050, "mp3")],
)
def test_recorded_question_is_understood(
    voice: VoiceAgentClient, container: str, codec: str, rate: int, fmt: str
) -> None:
    speech, speech_rate = espeak_wav(QUESTION)
    speech = np.concatenate([np.zeros(speech_rate // 4, np.float32), speech])
    data = encode(speech, speech_rate, container, codec, rate)
    sent = voice.send({"type": "audio", "data": b64(data), "format": fmt})
    heard = voice.wait_type("transcription_result", sent).body
    assert word_error_rate(QUESTION, heard["text"]) <= 0.2, heard
    complete = voice.wait_type("response_complete", sent).body
    assert "paris" in complete["text"].lower(), complete


def test_audio_without_a_format_is_recognised_from_its_bytes(voice: VoiceAgentClient) -> None:
    """voice-client.html sends {type: 'audio', data} with no format at all."""
    speech, rate = espeak_wav(QUESTION)
    sent = voice.send({"type": "audio", "data": b64(encode(speech, rate, "ogg", "libopus", 48000))})
    heard = voice.wait_type("transcription_result", sent).body
    assert word_error_rate(QUESTION, heard["text"]) <= 0.2, heard


def test_interrupt_and_new_input_stop_the_reply(server: RunningServer, voice: VoiceAgentClient) -> None:
    def said(kind: str, field: str, start: float) -> list[str]:
        return normalize_words(" ".join(m[field] for m in voice.between(start, kind=kind)))

    sent = voice.ask(STORY)
    voice.wait_type("audio_chunk", sent, timeout=120)
    time.sleep(1.0)  # the user hears a few words
    deadline = time.monotonic() + 30
    while len(said("text_delta", "text", sent)) <= len(said("audio_chunk", "text", sent)) + 3:
        assert time.monotonic() < deadline, "the LLM never wrote ahead of the speech"
        time.sleep(0.05)
    cut = voice.send({"type": "interrupt", "reason": "button_click"})
    spoken, written = said("audio_chunk", "text", sent), said("text_delta", "text", sent)
    stopped = voice.wait_type("speech_interrupted", cut, timeout=10)
    assert stopped.body["reason"] == "button_click"
    aborted = voice.wait_type("stream_abort", cut, timeout=10)
    later = voice.wait_type("speech_stream_end", cut, timeout=10)
    with pytest.raises(AssertionError):
        voice.wait_type("audio_chunk", later.at, timeout=2)
    # As the SDK: after stream_abort, response_complete with the text written so far.
    cut_short = voice.wait_type("response_complete", cut, timeout=10)
    assert cut_short.at >= aborted.at and "stream_finish" not in [m["type"] for m in voice.between(sent)]
    assert normalize_words(cut_short.body["text"])[: len(spoken)] == spoken, (cut_short.body, spoken)

    sent = voice.ask(STORY)
    voice.wait_type("audio_chunk", sent, timeout=120)
    cut = voice.ask(QUESTION)  # new input while the bot speaks: it stops on receipt, as the SDK does
    assert voice.wait_type("speech_interrupted", cut, timeout=10).body["reason"] == "user_speaking"
    answer_started = voice.wait_type("stream_start", cut)
    complete = voice.wait_type("response_complete", answer_started.at).body
    assert "paris" in complete["text"].lower() and "dragon" not in complete["text"].lower(), complete

    # The history keeps what the user heard of the first story, not what the LLM had written.
    session_id = voice.ws.response.headers["X-Voxloop-Session"]
    stored = httpx.get(f"{server.http}/v1/sessions/{session_id}", headers={"X-API-Key": server.api_key})
    turns = stored.json()["turns"]
    assert [t["role"] for t in turns[:2]] == ["user", "assistant"] and turns[0]["text"] == STORY, turns
    heard = normalize_words(turns[1]["text"])
    assert heard and heard == spoken[: len(heard)] and len(heard) < len(written), (heard, spoken, written)


# Greedy decoding: at the default temperature the 0.5B model now and then writes the call as prose.
TOOL_ENV = {"VOXLOOP_SERVER_TOOLS": "get_current_time", "VOXLOOP_LLM_TEMPERATURE": "0"}


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(Path(tmp_path_factory.mktemp("tools")), env=TOOL_ENV)
    yield running
    running.stop()


def test_server_side_tool_is_called_and_its_result_used(tool_server: RunningServer) -> None:
    agent = client(tool_server)
    try:
        sent = agent.ask("What time is it? Use the get_current_time tool.")  # Qwen 0.5B needs it named
        messages = reply_messages(agent, sent)
        call = next(m for m in messages if m["type"] == "tool_call")
        result = next(m for m in messages if m["type"] == "tool_result")
        assert call["toolName"] == "get_current_time" and call["toolCallId"] == result["toolCallId"]
        assert result["toolName"] == result["name"] == "get_current_time"
        stamp = str(result["result"])  # e.g. "Saturday 21 November 2026, 07:46 UTC"
        clock = stamp.split(", ")[-1].split()[0]
        hour, minute = (int(part) for part in clock.split(":"))
        answer = messages[-1]["text"]
        weekday, _, month = stamp.split()[:3]
        used = [clock, f"{hour % 12 or 12}:{minute:02d}", weekday, month]
        assert any(piece in answer for piece in used), (stamp, answer)
        assert messages[-1]["toolCalls"][0]["toolName"] == "get_current_time"
        assert [m["type"] for m in messages].index("tool_result") < [m["type"] for m in messages].index(
            "response_complete"
        )
    finally:
        agent.close()


def test_video_frames_are_acknowledged_and_bad_ones_rejected(server: RunningServer) -> None:
    video = client(server, "/v1/video-agent")
    try:
        sent = video.send({"type": "client_ready", "capabilities": {"video": True, "audio": True}})
        init = video.wait_type("session_init", sent, timeout=10).body
        assert init["sessionId"] == video.ws.response.headers["X-Voxloop-Session"]  # the gate's session id
        assert video.wait_type("capture_frame", sent, timeout=10).body["reason"] == "initial"

        for sequence, (codec, pix, fmt) in enumerate(
            [("libwebp", "yuv420p", "webp"), ("mjpeg", "yuvj420p", "jpeg"), ("png", "rgb24", "image/png")], 1
        ):
            sent = video.send(frame_message(image(codec, pix=pix), fmt, sequence))
            ack = video.wait_type("frame_ack", sent, timeout=10).body
            assert ack["sequence"] == sequence and isinstance(ack["timestamp"], int)

        big = png_header(640, 480) + bytes(MAX_FRAME_BYTES)  # a valid header on 2 MB of data
        for sequence, data, fmt, reason in [
            (10, big, "png", "frame_too_large"),
            (11, b"not an image at all", "webp", "bad_format"),
            (12, png_header(20000, 20000), "png", "bad_dimensions"),
        ]:
            sent = video.send(frame_message(data, fmt, sequence))
            error = video.wait_type("error", sent, timeout=10).body
            assert error["reason"] == reason and error["sequence"] == sequence, error
            assert "frame rejected" in error["message"]
        assert not [m for m in video.between(0, kind="frame_ack") if m["sequence"] >= 10]

        sent = video.ask(QUESTION)  # the text-only model answers; the frames are context only
        assert video.wait_type("capture_frame", sent, timeout=10).body["reason"] == "user_request"
        assert "paris" in video.wait_type("response_complete", sent).body["text"].lower()
    finally:
        video.close()


def test_bad_input_gets_errors_and_the_session_survives(
    server: RunningServer, voice: VoiceAgentClient
) -> None:
    bad = [
        "this is not json",
        "[1, 2, 3]",
        '{"text": "no type"}',
        '{"type": "launch_rockets"}',
        '{"type": "transcript", "text": "   "}',
        '{"type": "transcript", "text": 12}',
        '{"type": "transcript", "text": "' + "a" * 5000 + '"}',
        '{"type": "audio", "data": "%%% not base64 %%%", "format": "webm"}',
        '{"type": "audio", "data": "' + b64(b"\x00" * 64) + '", "format": "audio/x-unheard-of"}',
        '{"type": "audio", "format": "mp3"}',
        '{"type": "video_frame", "image": {"data": "' + b64(png_header(8, 8)) + '", "format": "png"}}',
        "[" * 100000 + "]" * 100000,
    ]
    for raw in bad:
        start = time.monotonic()
        voice.ws.send(raw)
        ready = voice.wait_type("session_init", voice.send({"type": "client_ready"}), timeout=10)
        errors = voice.between(start, ready.at, kind="error")
        assert len(errors) == 1 and isinstance(errors[0]["message"], str), (raw[:80], errors)

    sent = voice.send({"type": "audio", "data": b64(b"garbage bytes " * 100), "format": "mp3"})
    assert "decode" in voice.wait_type("error", sent, timeout=30).body["message"]
    sent = voice.send({"type": "audio", "data": b64(bytes(2_900_000)), "format": "wav"})
    assert "too large" in voice.wait_type("error", sent, timeout=30).body["message"]
    start = time.monotonic()
    voice.ws.send(b"\x00\x01binary")
    assert "binary" in voice.wait_type("error", start, timeout=10).body["message"]

    sent = voice.ask(QUESTION)
    assert "paris" in voice.wait_type("response_complete", sent).body["text"].lower()


def test_a_wrong_key_is_refused_in_the_protocols_error_shape(server: RunningServer) -> None:
    with connect(f"{server.ws}/v1/voice-agent?api_key=wrong") as ws:
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "unauthorized" in error["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1008


class VisionLlmStub:
    """An OpenAI-compatible chat server that records each request and streams a fixed answer with
    reasoning: the stand-in for a remote vision model, which cannot run on this machine."""

    ANSWER = "I see a small picture."

    def __init__(self) -> None:
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stub.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                deltas = [{"reasoning_content": "The user wants a description."}, {"content": stub.ANSWER}]
                for delta in deltas:
                    self.wfile.write(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())
                done = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


def test_frames_reach_a_vision_llm_and_reasoning_is_streamed(tmp_path: Path) -> None:
    llm = VisionLlmStub()
    env = {"VOXLOOP_LLM_BACKEND": "openai", "VOXLOOP_LLM_VISION": "true", "VOXLOOP_LLM_BASE_URL": llm.url}
    server = start_server(tmp_path, env=env)
    video = client(server, "/v1/video-agent")
    try:
        frames = [image("libwebp"), image("mjpeg", pix="yuvj420p")]
        for sequence, (data, fmt) in enumerate(zip(frames, ["webp", "jpeg"], strict=True), 1):
            video.wait_type("frame_ack", video.send(frame_message(data, fmt, sequence)), timeout=10)
        sent = video.ask("What do you see?")
        messages = reply_messages(video, sent)
        assert "".join(m["text"] for m in messages if m["type"] == "reasoning_delta").startswith("The user")
        assert messages[-1]["text"] == VisionLlmStub.ANSWER
        user = llm.requests[-1]["messages"][-1]
        assert user["role"] == "user" and user["content"][0] == {"type": "text", "text": "What do you see?"}
        urls = [part["image_url"]["url"] for part in user["content"][1:]]
        assert urls == [
            f"data:image/webp;base64,{b64(frames[0])}",
            f"data:image/jpeg;base64,{b64(frames[1])}",
        ]
    finally:
        video.close()
        server.stop()
        llm.http.shutdown()


scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
image_fields = st.fixed_dictionaries(
    {}, optional={"data": values | st.binary(max_size=300).map(b64), "format": values, "width": values}
)
hostile = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["audio", "video_frame", "interrupt", "client_ready", "transcript", "x", None]
            )
        },
        optional={
            "data": values | st.binary(max_size=300).map(b64),
            "format": values,
            "reason": values,
            "sequence": values,
            "image": image_fields | values,
            "text": st.none() | st.integers() | st.lists(st.text(max_size=5), max_size=3),  # never a turn
        },
    ),
    values,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=hostile)
def test_hostile_messages_get_errors_never_a_dropped_socket(server: RunningServer, message: object) -> None:
    with connect(f"{server.ws}/v1/video-agent?api_key={server.api_key}") as ws:
        ws.send(json.dumps(message, allow_nan=True))
        ws.send(json.dumps({"type": "client_ready"}))
        seen = []
        while (reply := json.loads(ws.recv(timeout=20)))["type"] != "session_init":
            seen.append(reply)
        expected = {"error", "frame_ack", "capture_frame", "transcription_error", "speech_interrupted"}
        assert {m["type"] for m in seen} <= expected, (message, seen)
        assert all(isinstance(m["message"], str) for m in seen if m["type"] == "error")
