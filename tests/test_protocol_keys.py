"""The key store, per-key limits, revocation, origins and the conversation history on the two
protocols that authenticate in their own way: Soca (the token in its start message) and SelamGPT
(Socket.IO's auth / query). A real server, keys made by the real ``voxloop keys`` CLI, real
clients, one real spoken question per protocol."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.selam_client import SelamClient
from tests.server import RunningServer, start_server
from tests.soca_client import SocaClient
from tests.speech import espeak_16k
from tests.test_keys import create_key, keys_cli

ORIGIN = "https://app.example"
GRACE_S = 2.0  # the Soca resume grace on this server: short, so a test can outlive it
BRIEF = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("protocol-keys")


@pytest.fixture(scope="module")
def keyed(data_dir: Path) -> dict[str, str]:
    return {
        "soca": create_key(data_dir, "--name", "soca"),
        "selam": create_key(data_dir, "--name", "selam"),
        "other": create_key(data_dir, "--name", "other"),
        "soca-single": create_key(data_dir, "--name", "soca-single", "--max-sessions", "1"),
        "selam-single": create_key(data_dir, "--name", "selam-single", "--max-sessions", "1"),
        "slow": create_key(data_dir, "--name", "slow", "--rate", "4"),
    }


@pytest.fixture(scope="module")
def keyed_server(data_dir: Path, keyed: dict[str, str]) -> Iterator[RunningServer]:
    env = {
        "VOXLOOP_DATA_DIR": str(data_dir),
        "VOXLOOP_CORS_ORIGINS": ORIGIN,
        "VOXLOOP_SOCA_RESUME_GRACE_S": str(GRACE_S),
    }
    running = start_server(data_dir, api_key="config-key", env=env)
    yield running
    running.stop()


@pytest.fixture
def opened() -> Iterator[list[SocaClient | SelamClient]]:
    clients: list[SocaClient | SelamClient] = []
    yield clients
    for client in clients:
        client.close()


def soca_start(key: str, session_id: str | None = None) -> dict:
    session_id = session_id or f"sess_{uuid.uuid4().hex[:12]}"
    return {"type": "start", "token": key, "session_id": session_id, "lang": "en", "sr": 16000} | {
        "prompt": BRIEF
    }


def soca(server: RunningServer, opened: list, start: dict) -> SocaClient:
    client = SocaClient(f"{server.ws}/v1/voice-ws", start)
    opened.append(client)
    return client


def selam(server: RunningServer, opened: list, key: str, **fields: object) -> SelamClient:
    client = SelamClient(server.http, key, **fields)
    opened.append(client)
    return client.connect()


def answer(client: SelamClient, timeout: float = 10) -> str:
    """How the server answered a connection: ``connected`` or ``error`` (a refusal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.events():
            if event.name in ("connected", "error"):
                return event.name
        time.sleep(0.05)
    return "nothing"


def history(server: RunningServer, session_id: str, key: str, turns: int = 2) -> httpx.Response:
    """GET /v1/sessions/{id}, waiting (briefly) for a turn committed a moment ago to be on disk."""
    deadline = time.monotonic() + 5
    while True:
        response = httpx.get(f"{server.http}/v1/sessions/{session_id}", headers={"X-API-Key": key})
        if response.status_code != 404 and len(response.json()["turns"]) >= turns:
            return response
        if time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def revoke(data_dir: Path, key: str) -> tuple[float, float]:
    """Revokes ``key`` with the CLI: (time before it ran, time it returned). The server may notice
    the revocation, and its error arrive, before a slow CLI process has even exited: events are
    looked for from the moment before, durations counted from the moment after."""
    before = time.monotonic()
    revoked = keys_cli(data_dir, "revoke", key.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr
    return before, time.monotonic()


# ---- Soca ----------------------------------------------------------------------------------


def test_soca_history_is_kept_under_the_session_id_and_revocation_ends_the_session(
    keyed_server: RunningServer, keyed: dict[str, str], data_dir: Path, opened: list
) -> None:
    key = keyed["soca"]
    start = soca_start(key)
    client = soca(keyed_server, opened, start)
    assert client.ready["type"] == "ready", client.ready
    ended = client.say(espeak_16k("What is the capital of France?"))
    answer = client.final_answer(since=ended - 10)

    found = history(keyed_server, start["session_id"], key)
    assert found.status_code == 200, found.text
    turns = found.json()["turns"]
    assert [turn["role"] for turn in turns] == ["user", "assistant"], turns
    assert "france" in turns[0]["text"].lower() and turns[1]["text"].strip() == answer["text"].strip()
    assert history(keyed_server, start["session_id"], keyed["other"], 0).status_code == 404  # not theirs

    revoking, revoked_at = revoke(data_dir, key)
    error = client.wait_for(lambda m: m["type"] == "error", timeout=10, since=revoking)
    assert error["message"] == "API key revoked"
    assert client.wait_closed() == 1008 and time.monotonic() - revoked_at < 8
    assert not client.stale

    # Once the conversation can no longer be resumed, its session_id still belongs to its key's
    # history: another key cannot write its own turns into it.
    time.sleep(GRACE_S + 0.5)
    taken = soca(keyed_server, opened, soca_start(keyed["other"], start["session_id"]))
    assert taken.ready == {"type": "error", "message": "session_id is in use by another key"}
    assert taken.wait_closed() == 1008
    operator = history(keyed_server, start["session_id"], "config-key")  # configuration keys see all
    assert operator.json()["turns"] == turns


def test_soca_session_limit_refuses_a_second_session_but_not_a_reconnect(
    keyed_server: RunningServer, keyed: dict[str, str], opened: list
) -> None:
    key = keyed["soca-single"]
    first_start = soca_start(key)
    first = soca(keyed_server, opened, first_start)
    assert first.ready["type"] == "ready", first.ready
    second_start = soca_start(key)
    second = soca(keyed_server, opened, second_start)
    assert second.ready["type"] == "error" and "1 open sessions" in second.ready["message"], second.ready
    assert second.wait_closed() == 1013  # try again later

    # The same session_id again (a client reconnecting over a new network path) takes over.
    again = soca(keyed_server, opened, first_start)
    assert again.ready["type"] == "ready" and again.ready["resumed"] is True, again.ready
    moved = first.wait_for(lambda m: m["type"] == "error", timeout=10)
    assert "newer connection" in moved["message"]
    again.close()
    deadline = time.monotonic() + 5
    while True:  # the place is free once the server has seen the close
        retry = soca(keyed_server, opened, second_start)
        if retry.ready["type"] == "ready" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert retry.ready["type"] == "ready", retry.ready


def test_soca_origin_and_message_rate(keyed_server: RunningServer, keyed: dict[str, str]) -> None:
    url = f"{keyed_server.ws}/v1/voice-ws"
    with connect(url, origin="https://evil.example") as ws:
        refusal = json.loads(ws.recv(timeout=10))
        assert refusal == {"type": "error", "message": "forbidden: origin not allowed"}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1008

    with connect(url, origin=ORIGIN) as ws:
        ws.send(json.dumps(soca_start(keyed["slow"])))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        for _ in range(40):
            ws.send(json.dumps({"type": "ping"}))
        errors = []
        while True:
            try:
                errors.append(json.loads(ws.recv(timeout=2))["message"])
            except TimeoutError:
                break
        limited = [e for e in errors if "messages per second" in e]
        assert 1 <= len(limited) <= 3, errors  # one a second, not one per dropped message
        assert len(errors) - len(limited) <= 10  # only the burst got through to the protocol
        time.sleep(2)  # the bucket refills: the session goes on
        ws.send(json.dumps({"type": "stop"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1000


# ---- SelamGPT ------------------------------------------------------------------------------


def test_selam_history_is_kept_under_the_session_id_and_revocation_disconnects(
    keyed_server: RunningServer, keyed: dict[str, str], data_dir: Path, opened: list
) -> None:
    key = keyed["selam"]
    client = selam(keyed_server, opened, key)
    client.wait("connected")
    started = client.start(voice="alloy", language="en", instructions=BRIEF)
    ended = client.say(espeak_16k("What is the capital of Italy?"))
    heard = client.wait("transcription", ended - 5, where=lambda d: d["is_final"])
    end = client.wait("audio_end", ended, timeout=120)

    found = history(keyed_server, started["session_id"], key)
    assert found.status_code == 200, found.text
    turns = found.json()["turns"]
    assert [turn["role"] for turn in turns] == ["user", "assistant"], turns
    assert turns[0]["text"].strip() == heard["text"].strip() and "capital" in heard["text"].lower()
    assert turns[1]["text"].strip() == end["text"].strip()
    assert history(keyed_server, started["session_id"], keyed["other"], 0).status_code == 404

    revoking, revoked_at = revoke(data_dir, key)
    error = client.wait_error("authentication_error", revoking)
    assert error["message"] == "API key revoked" and error["code"] == "key_revoked"
    client.wait("disconnect", revoking, timeout=5)
    assert time.monotonic() - revoked_at < 8


def test_selam_session_limit_origin_and_message_rate(
    keyed_server: RunningServer, keyed: dict[str, str], opened: list
) -> None:
    key = keyed["selam-single"]
    first = selam(keyed_server, opened, key)
    first.wait("connected")
    second = selam(keyed_server, opened, key)
    refusal = second.wait_error("authorization_error", 0)
    assert refusal["code"] == "rate_limited" and "1 open sessions" in refusal["message"]
    second.wait("disconnect", timeout=5)
    assert first.start(voice="alloy")["session_id"]  # the first connection is unaffected
    first.close()
    for _ in range(10):  # the place is free once the server has seen the disconnect
        third = selam(keyed_server, opened, key)
        if answer(third) == "connected":
            break
        time.sleep(0.3)
    assert answer(third) == "connected", third.summary()

    foreign = {"Origin": "https://evil.example"}
    evil = selam(keyed_server, opened, keyed["other"], headers=foreign, transports=("polling",))
    refusal = evil.wait_error("authorization_error", 0)
    assert refusal["code"] == "forbidden_origin"
    evil.wait("disconnect", timeout=5)

    slow = selam(keyed_server, opened, keyed["slow"])  # python-socketio's own Origin: the server's address
    slow.wait("connected")
    since = time.monotonic()
    for _ in range(40):
        slow.emit("control", {"action": "interrupt"})  # no session yet: each admitted one is refused
    time.sleep(2.5)
    errors = slow.errors(since)
    limited = [e for e in errors if e["code"] == "rate_limited"]
    assert 1 <= len(limited) <= 3, errors
    assert len(errors) - len(limited) <= 10, errors
    assert slow.start(voice="alloy")["session_id"]  # the bucket refilled: the connection goes on
