"""Tenant isolation of session ids on a real server with real clients and keys made by the real
``voxloop keys`` CLI: a key can never take, write into or read a session id of another key,
whether that id is live (on any protocol) or only stored, and of two keys racing for one new
id at most one gets it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

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
        asked = agent.ask(SECRET)
        agent.wait_type("response_complete", asked, timeout=120)
        # While alice's session is live, bob's Soca start with its id is refused...
        refused = soca_first_reply(server, soca_start(bob, session_id))
        assert refused == {"type": "error", "message": "session_id is in use by another key"}
        assert history(server, session_id, bob, 0).status_code == 404
    finally:
        agent.close()
    found = history(server, session_id, alice)
    assert found.status_code == 200 and "4242" in found.json()["turns"][0]["text"]
    # ... and once it has ended, its stored turns still make the id alice's.
    refused = soca_first_reply(server, soca_start(bob, session_id))
    assert refused == {"type": "error", "message": "session_id is in use by another key"}
    assert history(server, session_id, bob, 0).status_code == 404
    assert history(server, session_id, alice).json()["turns"] == found.json()["turns"]  # alice keeps it


def test_two_keys_racing_for_one_new_soca_session_id_at_most_one_gets_it(
    server: RunningServer, tenants: dict[str, str]
) -> None:
    for _ in range(10):
        session_id = f"race_{uuid.uuid4().hex[:12]}"
        replies: dict[str, dict] = {}
        sockets = {name: connect(f"{server.ws}/v1/voice-ws", open_timeout=30) for name in tenants}
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
        for ws in sockets.values():
            ws.close()
        kinds = sorted(reply["type"] for reply in replies.values())
        assert kinds == ["error", "ready"], replies
        loser = next(reply for reply in replies.values() if reply["type"] == "error")
        assert loser["message"] == "session_id is in use by another key"
