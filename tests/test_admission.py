"""Admission control on a real server holding one conversation (VOXLOOP_MAX_CONVERSATIONS=1):
every protocol refuses the next session at once in its own shape, /readyz reports saturation,
and the place is free again once the open conversation ends. Real clients throughout."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.selam_client import SelamClient
from tests.server import RunningServer, start_server
from tests.soca_client import SocaClient
from voxloop.service.admission import Admission

KEY = "admission-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_dir: Path = tmp_path_factory.mktemp("admission")
    running = start_server(log_dir, api_key=KEY, env={"VOXLOOP_MAX_CONVERSATIONS": "1"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def holder(server: RunningServer) -> Iterator[ClientConnection]:
    """The one conversation the server has room for: a Lokutor agent socket."""
    with connect(f"{server.ws}/ws/agent?api_key={KEY}") as socket:
        wait_readyz(server, 503)
        yield socket


def wait_readyz(server: RunningServer, status: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{server.http}/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response.json()
        time.sleep(0.1)


def refused(url: str, **options: object) -> tuple[dict, int | None]:
    """The first message of a refused WebSocket session and its close code."""
    with connect(url, **options) as socket:  # type: ignore[arg-type]
        first = json.loads(socket.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
        return first, socket.close_code


def test_readyz_reports_saturation(server: RunningServer, holder: ClientConnection) -> None:
    body = wait_readyz(server, 503)
    assert body["saturated"] is True and body["status"] == "unavailable"
    assert body["conversations"] == 1 and body["max_conversations"] == 1
    assert body["draining"] is False and body["lag_s"] >= 0


def test_metrics_export_queue_wait_per_job_kind(server: RunningServer) -> None:
    text = httpx.get(f"{server.http}/metrics").text
    assert 'voxloop_queue_wait_seconds_count{kind="llm_prefill"}' in text  # the warmup's prompt
    assert 'voxloop_scheduler_lag_seconds{lane="llm"}' in text


def test_lokutor_refused_with_http_503(server: RunningServer, holder: ClientConnection) -> None:
    with pytest.raises(InvalidStatus) as refusal:  # as seed 001 lists it: 503 Service Unavailable
        connect(f"{server.ws}/ws/agent?api_key={KEY}")
    assert refusal.value.response.status_code == 503
    error = json.loads(refusal.value.response.body)["error"]
    assert error["type"] == "unavailable" and "at capacity" in error["message"], error


def test_realtime_refused_with_error_then_1013(server: RunningServer, holder: ClientConnection) -> None:
    first, code = refused(
        f"{server.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {KEY}"},
        subprotocols=["realtime"],
    )
    assert first["type"] == "error" and first["error"]["code"] == "server_busy", first
    assert code == 1013


def test_voice_agent_refused_with_error_then_1013(server: RunningServer, holder: ClientConnection) -> None:
    first, code = refused(f"{server.ws}/v1/voice-agent?api_key={KEY}")
    assert first["type"] == "error" and "at capacity" in first["message"], first
    assert code == 1013


def test_soca_refused_with_error_then_1013(server: RunningServer, holder: ClientConnection) -> None:
    start = {"type": "start", "token": KEY, "session_id": f"sess_{uuid.uuid4().hex[:12]}", "lang": "en"}
    client = SocaClient(f"{server.ws}/v1/voice-ws", start | {"sr": 16000})
    try:
        assert client.ready["type"] == "error" and "at capacity" in client.ready["message"], client.ready
        assert client.wait_closed() == 1013
    finally:
        client.close()


def test_selam_refused_with_an_error_event(server: RunningServer, holder: ClientConnection) -> None:
    client = SelamClient(server.http, KEY).connect()
    try:
        refusal = client.wait_error("session_error", 0)
        assert refusal["code"] == "server_busy" and "at capacity" in refusal["message"], refusal
        client.wait("disconnect", timeout=5)
    finally:
        client.close()


def test_the_open_one_goes_on_then_frees_its_place(server: RunningServer, holder: ClientConnection) -> None:
    holder.send(json.dumps({"type": "ping"}))  # still open after all the refusals: no close frame
    holder.close()
    body = wait_readyz(server, 200)
    assert body["saturated"] is False and body["status"] == "ready"
    with connect(f"{server.ws}/ws/agent?api_key={KEY}") as socket:
        socket.send(json.dumps({"type": "ping"}))
        wait_readyz(server, 503)  # admitted: it holds the place now


def test_scheduler_lag_refuses_only_once_sessions_are_open() -> None:
    lag = [5.0]
    admission = Admission(max_conversations=10, max_lag_s=2.0, lag=lambda: lag[0])
    assert admission.refusal(0) is None and admission.refusal(1) is None  # the first ones get in
    assert "running 5.0 s late" in str(admission.refusal(2))
    lag[0] = 0.5
    assert admission.refusal(2) is None
    assert "10 conversations" in str(admission.refusal(10))
