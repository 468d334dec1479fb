"""Hostile clients, the fast parts (the long run is bench/abuse.py): a flood of invented paths
leaves /metrics as it was; /metrics can require a key or move to its own address; malformed
Engine.IO and Socket.IO frames are answered or closed without a traceback; client errors never
echo internal exception text; lone surrogates do not poison a session; audio sent any way counts
against the key's budget; Realtime items are capped; a slowloris connection is timed out; keys
in any spelling are redacted from the access log. A real server, real clients."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.raw_peer import RawPeer, socketio_peer
from tests.server import RunningServer, free_port, start_server
from tests.test_keys import create_key
from voxloop.server.redact import RedactKeys

FLOOD = 10_000
SELAM = "/v1/audio/agent"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("abuse")


@pytest.fixture(scope="module")
def budget_key(data_dir: Path) -> str:
    return create_key(data_dir, "--name", "budget", "--audio-per-min", "10")


@pytest.fixture(scope="module")
def server(data_dir: Path, budget_key: str) -> Iterator[RunningServer]:
    env = {"VOXLOOP_DATA_DIR": str(data_dir), "VOXLOOP_HEADER_TIMEOUT_S": "2"}
    running = start_server(data_dir, api_key="config-key", env=env)
    yield running
    running.stop()


def metrics(server: RunningServer) -> str:
    return httpx.get(f"{server.http}/metrics", timeout=30).text


def series(text: str) -> set[str]:
    """Every series /metrics exposes: name and labels, without the value."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def unauthorized_count(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("voxloop_client_errors_total{") and 'kind="unauthorized"' in line:
            if 'endpoint="/v1/sessions/{session_id}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def tracebacks(server: RunningServer) -> int:
    return server.log().count("Traceback")


async def flood(server: RunningServer, paths: list[str], concurrency: int = 8) -> list[int]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.http, limits=limits, timeout=30) as client:
        queue = iter(paths)
        statuses: list[int] = []

        async def worker() -> None:
            for path in queue:
                statuses.append((await client.get(path, headers={"X-API-Key": "wrong"})).status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses


def test_ten_thousand_invented_paths_leave_metrics_the_same_size(server: RunningServer) -> None:
    warm = asyncio.run(flood(server, ["/v1/sessions/warm-up", "/nowhere/warm-up"]))
    assert warm == [401, 404] or sorted(warm) == [401, 404]
    before = metrics(server)
    ids = [uuid.uuid4().hex for _ in range(FLOOD)]
    paths = [f"/v1/sessions/{i}" if n % 2 == 0 else f"/nowhere/{i}" for n, i in enumerate(ids)]
    statuses = asyncio.run(flood(server, paths))
    assert statuses.count(401) == FLOOD // 2 and statuses.count(404) == FLOOD // 2
    after = metrics(server)
    assert series(after) == series(before)  # not one series more: only counts and timings moved
    assert abs(len(after) - len(before)) < 100, (len(before), len(after))
    # Every 401 counted once, under the route's template; no client value anywhere.
    assert unauthorized_count(after) - unauthorized_count(before) == FLOOD // 2
    assert not any(i in after for i in ids[:200]) and "warm-up" not in after


def test_metrics_can_require_a_key_or_move_to_their_own_address(data_dir: Path, tmp_path: Path) -> None:
    quick = {"VOXLOOP_DATA_DIR": str(tmp_path), "VOXLOOP_WARMUP": "false"}
    keyed = start_server(tmp_path, api_key="ops-key", env=quick | {"VOXLOOP_METRICS_REQUIRE_KEY": "true"})
    try:
        assert httpx.get(f"{keyed.http}/metrics").status_code == 401
        found = httpx.get(f"{keyed.http}/metrics", headers={"X-API-Key": "ops-key"})
        assert found.status_code == 200 and "voxloop_sessions" in found.text
    finally:
        keyed.stop()
    port = free_port()
    apart = start_server(tmp_path, api_key="ops-key", env=quick | {"VOXLOOP_METRICS_PORT": str(port)})
    try:
        assert httpx.get(f"{apart.http}/metrics").status_code == 404
        assert "voxloop_sessions" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        apart.stop()


ENGINE_IO_GARBAGE = [
    "",
    "x",
    "b!!!",
    "\u00e9",
    "4",
    "42",
    "42/v1/audio/agent,[",
    "451-[]",
    "40/nope,",
    "6probe",
]


def test_malformed_engine_io_and_socket_io_frames_are_answered_not_raised(server: RunningServer) -> None:
    before = tracebacks(server)
    for garbage in ENGINE_IO_GARBAGE:  # without a session: closed (or ignored), never a traceback
        peer = RawPeer(server.port, "/socket.io/?EIO=4&transport=websocket&api_key=config-key")
        assert peer.recv_text().startswith("0")
        peer.send_text(garbage)
        peer.send_frame(b"\xff\x00garbage", opcode=2)
        peer.close()
    peer, first = socketio_peer(server.port, "config-key")  # with one: a SelamGPT error
    assert first == "connected"
    peer.send_text(f'42{SELAM},["audio_chunk", {{"audio": ')  # cut short: not JSON
    while not (text := peer.recv_text(timeout=10)).startswith(f'42{SELAM},["error"'):
        if text == "2":
            peer.send_text("3")
    error = json.loads(text[len(f"42{SELAM},") :])[1]
    assert error["code"] == "malformed_packet", error
    peer.send_text(f'42{SELAM},["control", {{"action": "unknown"}}]')  # the connection goes on
    assert peer.recv_text(timeout=10).startswith(f"42{SELAM},")
    peer.close()
    assert httpx.get(f"{server.http}/healthz").status_code == 200
    assert tracebacks(server) == before, server.log()[-3000:]


def test_tts_errors_do_not_echo_internals_and_odd_text_is_spoken(server: RunningServer) -> None:
    before = tracebacks(server)
    requests = [
        {"text": "My number is " + "1234567890" * 4 + ".", "voice": "F1"},
        {"text": "Hola \ud800 amigo.", "voice": "espeak-es-f1", "lang": "es"},
    ]
    with connect(f"{server.ws}/ws/tts?api_key=config-key", max_size=1 << 24) as ws:
        for request in requests:
            ws.send(json.dumps(request))
            audio = 0
            while (reply := ws.recv(timeout=60)) != "EOS":
                assert not (isinstance(reply, str) and reply.startswith("ERR")), (request, reply)
                audio += len(reply) if isinstance(reply, bytes) else 0
            assert audio > 0, request
    assert tracebacks(server) == before


def test_clients_that_stop_reading_long_speech_do_not_starve_a_new_request(server: RunningServer) -> None:
    """Each piece of speech is due when the audio before it would have played out, so four clients
    that asked for minutes of speech and read none of it (their socket buffers still take
    megabytes) wait behind a new request's first words instead of holding the speech workers."""
    readers = []
    for _ in range(4):
        peer = RawPeer(server.port, "/ws/tts?api_key=config-key")
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.send_json({"text": "A long story about the sea. " * 150, "voice": "F1"})
        readers.append(peer)
    try:
        with connect(f"{server.ws}/ws/tts?api_key=config-key") as ws:
            ws.send(json.dumps({"text": "All good.", "voice": "F1"}))
            audio = 0
            while (reply := ws.recv(timeout=30)) != "EOS":
                audio += len(reply) if isinstance(reply, bytes) else 0
            assert audio > 0
    finally:
        for peer in readers:
            peer.abort()


def test_a_lone_surrogate_does_not_poison_a_voice_agent_session(server: RunningServer) -> None:
    with connect(f"{server.ws}/v1/voice-agent?api_key=config-key", max_size=1 << 24) as ws:
        for turn in (
            '{"type": "transcript", "text": "Hello \\ud800 there. Say ok."}',
            '{"type": "transcript", "text": "Say yes."}',
        ):
            ws.send(turn)  # the second turn (and its history write) works after the first
            while (message := json.loads(ws.recv(timeout=120)))["type"] != "response_complete":
                assert message["type"] != "error", message


def speech_like(seconds: float, rate: int = 16000) -> bytes:
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
    return (tone * 32767).astype("<i2").tobytes()


def test_every_audio_path_charges_the_keys_audio_budget(server: RunningServer, budget_key: str) -> None:
    clip = base64.b64encode(speech_like(45)).decode()
    body = {"audio": clip, "format": "pcm16", "sample_rate": 16000, "language": "en"}
    refused = httpx.post(
        f"{server.http}/stt/transcribe", headers={"X-API-Key": budget_key}, json=body, timeout=60
    )
    assert refused.status_code == 429 and "audio" in refused.json()["error"]["message"]
    with connect(f"{server.ws}/v1/realtime?api_key={budget_key}", max_size=1 << 24) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        audio = base64.b64encode(speech_like(30, 24000)).decode()
        item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]}
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        while (event := json.loads(ws.recv(timeout=30)))["type"] != "error":
            assert not event["type"].startswith("conversation.item"), event
        assert event["error"]["code"] == "rate_limit_exceeded", event


def test_realtime_items_are_capped(server: RunningServer) -> None:
    from voxloop.protocols.realtime.items import MAX_ITEMS

    with connect(f"{server.ws}/v1/realtime?api_key=config-key", max_size=1 << 24) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        for _ in range(MAX_ITEMS + 1):
            ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        errors = []
        while not errors:
            event = json.loads(ws.recv(timeout=30))
            if event["type"] == "error":
                errors.append(event)
        assert errors[0]["error"]["code"] == "conversation_full", errors


def test_a_slowloris_connection_is_timed_out(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        for _ in range(20):  # a header byte a second keeps the connection busy, not the timer
            try:
                sock.sendall(b"a")
            except OSError:
                break
            sock.settimeout(1)
            try:
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        assert time.monotonic() - started < 10


def test_keys_are_redacted_in_every_spelling() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', (), None)
    line = "/v1/voice-agent?API_KEY=s1&apikey=s2&key=s3&token=s4&Access_Token=s5&x-api-key=s6&voice=F1"
    record.args = ("127.0.0.1:5000", "GET", line, "1.1", 200)
    RedactKeys().filter(record)
    redacted = record.getMessage()
    assert not any(f"s{n}" in redacted for n in range(1, 7)) and "voice=F1" in redacted, redacted
