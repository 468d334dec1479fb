"""Staying up and going down cleanly, on real server processes: SIGTERM tells every open session
(its protocol's error, then close 1001) and exits 0; SIGKILL mid-conversation loses no committed
turn (a new server on the same data directory serves them at GET /v1/sessions/{id})."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.agent_client import AgentClient
from tests.server import start_server
from tests.speech import espeak_16k


def closed_with(ws, code: int) -> list[str | bytes]:
    """Everything the socket still received, once it closed with ``code``."""
    received = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            received.append(ws.recv(timeout=15))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value
    return received


def test_sigterm_tells_open_sessions_and_exits_zero(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    agent = AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}", speed=2.0)
    try:
        with connect(f"{server.ws}/ws/tts?api_key={server.api_key}") as tts:
            agent.configure("You are a helpful assistant.")
            question = espeak_16k("Tell me a long story about the sea.")
            agent.say(np.concatenate([question, np.zeros(1600, np.float32)]))
            agent.wait_transcript("user", since=0, timeout=60)  # the conversation is under way
            tts.send(json.dumps({"text": "Hello there. " * 30}))
            assert isinstance(tts.recv(timeout=30), bytes)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=15) == 0
            assert time.monotonic() - started < 8, "drain took too long"
            told = [m for m in closed_with(tts, 1001) if isinstance(m, str)]
            assert told and told[-1] == "ERR: server shutting down"
        agent.wait_for(lambda m: m == {"type": "error", "data": "server shutting down"}, timeout=5)
        assert agent.ws.close_code == 1001
    finally:
        agent.close()
        server.stop()


def test_sigkill_mid_conversation_loses_no_committed_turn(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    client = AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}", speed=2.0)
    session_id = client.ws.response.headers["x-voxloop-session"]
    try:
        client.configure("You are a helpful assistant. Answer in one short sentence.")
        ended = client.say(
            np.concatenate([espeak_16k("What is the capital of France?"), np.zeros(1600, np.float32)])
        )
        answer = client.wait_transcript("assistant", since=ended, timeout=90)["data"]
        client.wait_status("listening", since=ended, timeout=60)
        asked = client.say(
            np.concatenate([espeak_16k("Tell me a story about Paris."), np.zeros(1600, np.float32)])
        )
        client.wait_status("speaking", since=asked, timeout=90)  # mid-reply
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        client.close()
        server.stop()
    restarted = start_server(tmp_path)  # same data directory, so the same history.db
    try:
        url = f"{restarted.http}/v1/sessions/{session_id}"
        assert httpx.get(url).status_code == 401
        history = httpx.get(url, headers={"X-API-Key": restarted.api_key})
        assert history.status_code == 200, history.text
        turns = history.json()["turns"]
        assert [t["role"] for t in turns[:2]] == ["user", "assistant"]
        assert "capital" in turns[0]["text"].lower() and turns[1]["text"] == answer
        assert turns[0]["at"] <= turns[1]["at"] <= time.time()
        missing = httpx.get(f"{restarted.http}/v1/sessions/nope", headers={"X-API-Key": restarted.api_key})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    finally:
        restarted.stop()
