"""deploy/haproxy.cfg in front of two real voxloop nodes on loopback: a conversation goes through
it, and a node that is saturated or draining (SIGTERM'd, its open session still finishing) gets
no new session. Where a session landed is read from each node's own /readyz figures."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.haproxy import Balancer, haproxy, missing
from tests.server import RunningServer, free_port, start_server
from tests.speech import mentions

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

KEY = "lb-key"
NODE = {
    "VOXLOOP_WARMUP": "0",  # models load on first use: only one conversation here needs them
    # Idle sessions make no inference lag; a busy CI machine's lag must not take a node out.
    "VOXLOOP_ADMISSION_MAX_LAG_S": "0",
}
SMALL = {"VOXLOOP_MAX_CONVERSATIONS": "2"}  # node1: full with two
LEAVING = {"VOXLOOP_DRAIN_GRACE_S": "60"}  # node2: its open sessions may finish after SIGTERM


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    folders = [tmp_path_factory.mktemp(f"node{i}") for i in (1, 2)]
    with ThreadPoolExecutor(2) as pool:  # both load at once
        started = list(
            pool.map(
                lambda a: start_server(a[0], KEY, NODE | a[1]), zip(folders, (SMALL, LEAVING), strict=True)
            )
        )
    yield started
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def balancer(nodes: list[RunningServer]) -> Iterator[Balancer]:
    with haproxy([("127.0.0.1", node.port) for node in nodes]) as running:
        for name in ("node1", "node2"):
            running.wait_state(name, "UP")
        yield running


@contextlib.contextmanager
def realtime(base: str) -> Iterator[ClientConnection]:
    """An admitted OpenAI Realtime session (a refused one gets `error` and close 1013 instead)."""
    url = f"{base}/v1/realtime?model=gpt-realtime"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, subprotocols=["realtime"]) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "session.created", first
        yield ws


def ask(ws: ClientConnection, question: str) -> tuple[str, int]:
    """A typed question; the spoken answer's transcript and its count of audio chunks."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}
    ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    ws.send(json.dumps({"type": "response.create"}))
    transcript, chunks = "", 0
    while (event := json.loads(ws.recv(timeout=120)))["type"] != "response.done":
        chunks += event["type"] == "response.output_audio.delta"
        transcript += (
            event.get("delta", "") if event["type"] == "response.output_audio_transcript.delta" else ""
        )
    assert event["response"]["status"] == "completed", event
    return transcript, chunks


def test_a_conversation_goes_through_haproxy(balancer: Balancer, nodes: list[RunningServer]) -> None:
    with realtime(balancer.ws) as ws:
        assert sorted(node.conversations() for node in nodes) == [0, 1]
        transcript, chunks = ask(ws, "What is the capital of France? Answer in one short sentence.")
    assert mentions(transcript, "paris") and chunks > 0, transcript


def test_saturated_node_gets_no_new_session(balancer: Balancer, nodes: list[RunningServer]) -> None:
    small, other = nodes
    with contextlib.ExitStack() as sessions:
        for _ in range(2):  # straight to the node: HAProxy counts none of them
            sessions.enter_context(realtime(small.ws))
        balancer.wait_state("node1", "DOWN")  # its /readyz answers 503
        # Without the check, leastconn would send one of these to node1 (0 connections through HAProxy).
        for _ in range(2):
            sessions.enter_context(realtime(balancer.ws))
        assert (small.conversations(), other.conversations()) == (2, 2)
    balancer.wait_state("node1", "UP")


def test_draining_node_gets_no_new_session_while_its_open_one_finishes(
    balancer: Balancer, nodes: list[RunningServer]
) -> None:
    other, leaving = nodes
    with contextlib.ExitStack() as through, realtime(leaving.ws) as open_session:
        leaving.process.send_signal(signal.SIGTERM)
        balancer.wait_state("node2", "DOWN")
        ready = httpx.get(f"{leaving.http}/readyz")
        assert ready.status_code == 503 and ready.json()["draining"] is True, ready.text
        for _ in range(2):
            through.enter_context(realtime(balancer.ws))
        assert other.conversations() == 2 and leaving.conversations() == 1
        transcript, chunks = ask(open_session, "Say hello in one short sentence.")  # it goes on
        assert transcript and chunks > 0
        assert leaving.process.poll() is None, "the node left before its open session ended"
        open_session.close()
        # Its last session over, the node exits at once, long before its 60 s of grace.
        assert leaving.process.wait(timeout=20) == 0, leaving.log()[-2000:]
    assert "draining: 1 sessions open" in leaving.log()
    assert balancer.states()["node2"] == "DOWN" and other.process.poll() is None


def test_no_node_left_is_refused_like_a_node_refuses() -> None:
    """Every node full, leaving or gone: a Lokutor SDK reads HTTP 503 with voxloop's JSON error."""
    with haproxy([("127.0.0.1", free_port()), ("127.0.0.1", free_port())]) as balancer:
        for name in ("node1", "node2"):
            balancer.wait_state(name, "DOWN")
        with pytest.raises(InvalidStatus) as refusal:
            connect(f"{balancer.ws}/ws/agent?api_key={KEY}")
    assert refusal.value.response.status_code == 503
    error = json.loads(refusal.value.response.body)["error"]
    assert error["type"] == "unavailable" and "at capacity" in error["message"], error
