"""Tenants and leases on a real server with real clients and keys made by the real ``voxloop keys``
CLI. A key can never take, write into or read a session id of another key, whether that id is
live (on any protocol) or only stored, and of two keys racing for one new id at most one gets it.
A key's session slots come back however its sessions end: a close right after a message, a TCP
reset, a peer gone silent (half-open), on every protocol."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.raw_peer import RawPeer, socketio_peer
from tests.server import RunningServer, start_server
from tests.test_keys import create_key
from tests.test_protocol_keys import history, soca_start
from tests.voice_agent_client import VoiceAgentClient

SECRET = "Remember this: my vault code is 4242. Reply with one word."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenancy")


@pytest.fixture(scope="module")
def tenants(data_dir: Path) -> dict[str, str]:
    return {name: create_key(data_dir, "--name", name) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def server(data_dir: Path, tenants: dict[str, str]) -> Iterator[RunningServer]:
    running = start_server(data_dir, api_key="config-key", env={"VOXLOOP_DATA_DIR": str(data_dir)})
    yield running
    running.stop()


def soca_first_reply(server: RunningServer, start: dict) -> dict:
    with connect(f"{server.ws}/v1/voice-ws", open_timeout=30) as ws:
        ws.send(json.dumps(start))
        return json.loads(ws.recv(timeout=30))


def test_a_voice_agent_session_id_cannot_be_taken_or_read_by_another_key(
    server: RunningServer, tenants: dict[str, str]
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    agent = VoiceAgentClient(f"{server.ws}/v1/voice-agent?api_key={alice}")
    try:
        sent = agent.send({"type": "client_ready"})
        session_id = agent.wait_type("session_init", sent, timeout=10).body["sessionId"]
        # Live on another protocol, with nothing stored yet: bob's Soca start with its id is refused.
        refused = soca_first_reply(server, soca_start(bob, session_id))
        assert refused == {"type": "error", "message": "session_id is in use by another key"}
        asked = agent.ask(SECRET)
        agent.wait_type("response_complete", asked, timeout=120)
        assert history(server, session_id, bob, 0).status_code == 404
    finally:
        agent.close()
    found = history(server, session_id, alice)
    assert found.status_code == 200 and "4242" in found.json()["turns"][0]["text"]
    # Once it has ended, its stored turns still make the id alice's.
    refused = soca_first_reply(server, soca_start(bob, session_id))
    assert refused == {"type": "error", "message": "session_id is in use by another key"}
    assert history(server, session_id, bob, 0).status_code == 404
    assert history(server, session_id, alice).json()["turns"] == found.json()["turns"]  # alice keeps it
    # Nor can bob continue it as a Lokutor conversation (`?session_id=`, a voxloop extension).
    with connect(f"{server.ws}/ws/agent?api_key={bob}&session_id={session_id}") as ws:
        refused = json.loads(ws.recv(timeout=10))
    assert refused == {"type": "error", "data": "session_id is in use by another key"}
    assert history(server, session_id, alice).json()["turns"] == found.json()["turns"]


def race_for(server: RunningServer, tenants: dict[str, str], session_id: str) -> dict[str, dict]:
    """Every key sends its Soca start for ``session_id`` at the same moment; their first replies."""
    replies: dict[str, dict] = {}
    with contextlib.ExitStack() as opened:
        sockets = {name: opened.enter_context(connect(f"{server.ws}/v1/voice-ws")) for name in tenants}
        barrier = threading.Barrier(len(sockets))

        def race(name: str) -> None:
            barrier.wait()
            sockets[name].send(json.dumps(soca_start(tenants[name], session_id)))
            replies[name] = json.loads(sockets[name].recv(timeout=30))

        threads = [threading.Thread(target=race, args=(name,)) for name in sockets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    return replies


def test_two_keys_racing_for_one_new_soca_session_id_at_most_one_gets_it(
    server: RunningServer, tenants: dict[str, str]
) -> None:
    for _ in range(10):
        replies = race_for(server, tenants, f"race_{uuid.uuid4().hex[:12]}")
        kinds = sorted(reply["type"] for reply in replies.values())
        assert kinds == ["error", "ready"], replies
        loser = next(reply for reply in replies.values() if reply["type"] == "error")
        assert loser["message"] == "session_id is in use by another key"


# ---- leases: a key's slots come back however its sessions end --------------------------------

ADMIT_WITHIN_S = 35.0
HELLO = {"type": "transcript", "text": "Say ok."}


@pytest.fixture(scope="module")
def pair(data_dir: Path) -> str:
    """A key of two sessions at most: two leaked slots lock it out."""
    return create_key(data_dir, "--name", "pair", "--max-sessions", "2")


def voice_agent_session(server: RunningServer, key: str) -> RawPeer | None:
    """A /v1/voice-agent session that said something, or None when the key was refused."""
    peer = RawPeer(server.port, f"/v1/voice-agent?api_key={key}")
    if not peer.leased:
        peer.close()
        return None
    peer.send_json(HELLO)
    return peer


def soca_session(server: RunningServer, key: str) -> RawPeer | None:
    peer = RawPeer(server.port, "/v1/voice-ws")
    peer.send_json(soca_start(key))
    if json.loads(peer.recv_text())["type"] != "ready":
        peer.close()
        return None
    peer.send_frame(bytes(640), opcode=2)  # 20 ms of silence
    return peer


def selam_session(server: RunningServer, key: str) -> RawPeer | None:
    peer, first = socketio_peer(server.port, key)
    if first != "connected":
        peer.close()
        return None
    return peer


def agent_session(server: RunningServer, key: str) -> RawPeer | None:
    try:
        peer = RawPeer(server.port, f"/ws/agent?api_key={key}")
    except ConnectionError as refused:  # the Lokutor sockets refuse a full key at the handshake
        assert "429" in str(refused), refused
        return None
    if not peer.leased:
        peer.close()
        return None
    peer.send_frame(bytes(1764), opcode=2)  # 20 ms of silence at 44.1 kHz
    return peer


def close_at_once(peer: RawPeer) -> None:
    peer.close()


def go_silent(peer: RawPeer) -> None:
    """Half-open: the peer neither reads, answers pings nor closes; only pings can find it gone."""
    SILENT.append(peer)


SILENT: list[RawPeer] = []
OPENERS = {
    "voice-agent": voice_agent_session,
    "soca": soca_session,
    "selam": selam_session,
    "agent": agent_session,
}
ENDINGS = {"close": close_at_once, "tcp-reset": RawPeer.abort, "half-open": go_silent}


def open_sessions(server: RunningServer) -> float:
    text = httpx.get(f"{server.http}/metrics", headers={"X-API-Key": "config-key"}, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("voxloop_sessions{")
    )


@pytest.mark.parametrize(
    ("protocol", "ending"),
    [
        ("voice-agent", "close"),
        ("voice-agent", "tcp-reset"),
        ("agent", "tcp-reset"),
        ("soca", "tcp-reset"),
        ("selam", "tcp-reset"),
        ("voice-agent", "half-open"),
    ],
)
def test_a_keys_slots_come_back_however_its_sessions_end(
    server: RunningServer, pair: str, protocol: str, ending: str
) -> None:
    opener = OPENERS[protocol]
    sessions = [opener(server, pair) for _ in range(2)]
    assert all(sessions), "the key's two slots were not free to begin with"
    assert opener(server, pair) is None  # the key is full: a third session is refused
    for session in sessions:
        ENDINGS[ending](session)
    ended = time.monotonic()
    while (admitted := voice_agent_session(server, pair)) is None:
        assert time.monotonic() - ended < ADMIT_WITHIN_S, f"no slot back {ADMIT_WITHIN_S} s after {ending}"
        time.sleep(0.5)
    print(f"{protocol} {ending}: a new session admitted {time.monotonic() - ended:.1f} s later")
    admitted.close()
    while open_sessions(server) != 0:  # the sessions gauge comes back to 0 too
        assert time.monotonic() - ended < ADMIT_WITHIN_S + 10, open_sessions(server)
        time.sleep(0.2)
    for peer in SILENT:
        peer.abort()
    SILENT.clear()
