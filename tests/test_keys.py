"""API keys from the SQLite store and the configuration, per-key limits, revocation of open
sessions, and allowed origins: on a real server, with keys made by the real ``voxloop keys``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.server import RunningServer, start_server
from tests.speech import espeak_16k
from voxloop.audio.pcm import float_to_pcm16
from voxloop.service.auth import KeyCheck
from voxloop.service.keys import KeyInfo, KeyLimits, KeyStore
from voxloop.service.limits import Limiter, LimitExceeded

ORIGIN = "https://app.example"


def keys_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOXLOOP_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "voxloop.cli", "keys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def create_key(data_dir: Path, *args: str) -> str:
    made = keys_cli(data_dir, "create", *args)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


# ---- the store and the limiter on their own ------------------------------------------------


def test_store_keeps_digests_only_and_revokes_by_prefix(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db", KeyLimits(max_sessions=7))
    key, info = store.create("alice", messages_per_s=3)
    other, _ = store.create("bob")
    assert key.startswith(f"vxl_{info.id}_") and len(key) > 40
    assert store.identify(key) == info
    assert info.limits == KeyLimits(max_sessions=7, messages_per_s=3)  # unset limits: the defaults
    assert store.identify(key + "x") is None and store.identify("") is None
    on_disk = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    secret = key.removeprefix(f"vxl_{info.id}_")  # (it may contain "_" itself)
    assert key.encode() not in on_disk and secret.encode() not in on_disk
    with pytest.raises(ValueError):
        store.revoke("")  # matches every key: refused
    store.revoke(info.id[:5])
    assert store.identify(key) is None and store.identify(other) is not None
    assert store.revoked_ids() == {info.id}


async def test_key_check_config_and_stored_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    assert (await KeyCheck([], store).identify(None)).id == "anonymous"  # no keys anywhere: an open server
    key, info = store.create("svc")
    check = KeyCheck(["dev-key"], store)
    assert await check.accepts("dev-key") and await check.identify(key) == info
    for wrong in (None, "dev-keyx", "x" * 10_000):
        assert not await check.accepts(wrong)
    assert await KeyCheck([], store).identify(None) is None  # a stored key closes the open server


async def test_limiter_sessions_messages_audio_and_drain() -> None:
    limiter = Limiter()
    key = KeyInfo("k", "k", KeyLimits(max_sessions=2, messages_per_s=5, audio_s_per_min=6))
    first, second = await limiter.open_session(key), await limiter.open_session(key)
    with pytest.raises(LimitExceeded, match="2 open sessions"):
        await limiter.open_session(key)
    second.close()
    third = await limiter.open_session(key)  # a closed lease frees its place
    sent = 0
    with pytest.raises(LimitExceeded, match="messages per second"):
        for _ in range(100):
            first.message()
            sent += 1
    assert sent == 10  # the burst: two seconds' worth, shared by every session of the key
    with pytest.raises(LimitExceeded):
        third.message()
    first.audio(5.0)
    with pytest.raises(LimitExceeded, match="audio per minute"):
        third.audio(2.0)
    left = await limiter.drain(timeout_s=0.2)
    assert left == 2 and first.ended.is_set() and first.close_code == 1001
    with pytest.raises(LimitExceeded, match="shutting down"):
        await limiter.open_session(key)


# ---- on a real server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def keyed(data_dir: Path) -> dict[str, str]:
    return {
        "plain": create_key(data_dir, "--name", "plain"),
        "single": create_key(data_dir, "--name", "single", "--max-sessions", "1"),
        "slow": create_key(data_dir, "--name", "slow", "--rate", "4"),
        "short": create_key(data_dir, "--name", "short", "--audio-per-min", "2"),
        "doomed": create_key(data_dir, "--name", "doomed"),
    }


@pytest.fixture(scope="module")
def keyed_server(data_dir: Path, keyed: dict[str, str]) -> Iterator[RunningServer]:
    env = {"VOXLOOP_DATA_DIR": str(data_dir), "VOXLOOP_CORS_ORIGINS": ORIGIN, "VOXLOOP_WARMUP": "false"}
    running = start_server(data_dir, api_key="config-key", env=env)
    yield running
    running.stop()


def prompt_answered(ws) -> bool:
    ws.send(json.dumps({"type": "prompt", "data": "Be brief."}))
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message.get("data") == "prompt_set":
            return True


def test_cli_lists_keys_without_secrets(data_dir: Path, keyed: dict[str, str]) -> None:
    listed = keys_cli(data_dir, "list")
    assert listed.returncode == 0, listed.stderr
    for name, key in keyed.items():
        key_id = key.split("_")[1]
        assert key_id in listed.stdout and name in listed.stdout and key not in listed.stdout
    assert keys_cli(data_dir, "revoke", "zzzz").returncode == 2  # no such key: a clear refusal


def test_stored_and_config_keys_open_sessions(keyed_server: RunningServer, keyed: dict[str, str]) -> None:
    for key in (keyed["plain"], "config-key"):
        assert httpx.get(f"{keyed_server.http}/voices", headers={"X-API-Key": key}).status_code == 200
        with connect(f"{keyed_server.ws}/ws/agent?api_key={key}") as ws:
            assert len(ws.response.headers["x-voxloop-session"]) == 32
            assert prompt_answered(ws)
    refused = httpx.get(f"{keyed_server.http}/voices", headers={"X-API-Key": keyed["plain"][:-1]})
    assert refused.status_code == 401


def test_session_limit_refuses_the_second_session_only(
    keyed_server: RunningServer, keyed: dict[str, str]
) -> None:
    url = f"{keyed_server.ws}/ws/agent?api_key={keyed['single']}"
    with connect(url) as first:
        with pytest.raises(InvalidStatus) as refused:  # at the handshake: HTTP 429, a JSON body
            connect(url)
        assert refused.value.response.status_code == 429
        error = json.loads(refused.value.response.body)["error"]
        assert error["type"] == "rate_limited" and "1 open sessions" in error["message"]
        assert prompt_answered(first)
    with connect(url) as again:  # the place is free once the first session closed
        assert prompt_answered(again)


def test_message_rate_limit_drops_the_flood_and_the_session_goes_on(
    keyed_server: RunningServer, keyed: dict[str, str]
) -> None:
    with connect(f"{keyed_server.ws}/ws/agent?api_key={keyed['slow']}") as ws:
        for _ in range(40):
            ws.send(json.dumps({"type": "metrics", "data": True}))
        errors = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                errors.append(json.loads(ws.recv(timeout=1)))
            except TimeoutError:
                break
        assert errors and all("messages per second" in e["data"] for e in errors), errors
        assert len(errors) <= 3  # one a second, not one per dropped message
        time.sleep(2)  # the bucket refills
        assert prompt_answered(ws)
    statuses = [
        httpx.get(f"{keyed_server.http}/voices", headers={"X-API-Key": keyed["slow"]}) for _ in range(20)
    ]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and limited[0].json()["error"]["type"] == "rate_limited"


def test_audio_budget_is_enforced_on_stt(keyed_server: RunningServer, keyed: dict[str, str]) -> None:
    pcm = float_to_pcm16(espeak_16k("Testing the audio budget of this key with a long sentence."))
    with connect(f"{keyed_server.ws}/ws/stt?api_key={keyed['short']}") as ws:
        ws.send(json.dumps({"language": "en"}))
        for start in range(0, len(pcm), 3200):  # about 3 s of audio against a 2 s budget
            ws.send(pcm[start : start + 3200])
        message = json.loads(ws.recv(timeout=20))
        while message["type"] != "error":
            message = json.loads(ws.recv(timeout=20))
        assert "seconds of audio per minute" in message["data"]


def test_revoked_key_ends_its_open_session(
    keyed_server: RunningServer, keyed: dict[str, str], data_dir: Path
) -> None:
    key = keyed["doomed"]
    with connect(f"{keyed_server.ws}/ws/agent?api_key={key}") as doomed:
        with connect(f"{keyed_server.ws}/ws/agent?api_key={keyed['plain']}") as bystander:
            assert prompt_answered(doomed)
            revoked = keys_cli(data_dir, "revoke", key.split("_")[1])
            assert revoked.returncode == 0, revoked.stderr
            started = time.monotonic()
            error = json.loads(doomed.recv(timeout=10))
            assert error == {"type": "error", "data": "API key revoked"}
            with pytest.raises(ConnectionClosed) as closed:
                doomed.recv(timeout=5)
            assert closed.value.rcvd.code == 1008 and time.monotonic() - started < 6
            assert prompt_answered(bystander)
    time.sleep(2.5)  # the key cache forgets within two seconds
    assert httpx.get(f"{keyed_server.http}/voices", headers={"X-API-Key": key}).status_code == 401


def test_cors_and_websocket_origins(keyed_server: RunningServer, keyed: dict[str, str]) -> None:
    preflight = httpx.options(
        f"{keyed_server.http}/voices",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    evil = httpx.options(
        f"{keyed_server.http}/voices",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in evil.headers
    url = f"{keyed_server.ws}/ws/agent?api_key={keyed['plain']}"
    with pytest.raises(InvalidStatus) as refused:  # Lokutor's sockets refuse at the handshake
        connect(url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    assert "origin not allowed" in json.loads(refused.value.response.body)["error"]["message"]
    with connect(url, origin=ORIGIN) as ws:
        assert prompt_answered(ws)
