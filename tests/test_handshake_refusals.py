"""The gate's HTTP refusals at the WebSocket handshake (Lokutor's sockets, seed 001): 401 for a bad
key, 429 over the key's open sessions, 503 while the server drains; each a short JSON body, and
the handler never runs. Other routes keep accepting, then closing, in their protocol's shape."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from voxloop.service.auth import KeyCheck
from voxloop.service.guard import GuardedRoute
from voxloop.service.keys import KeyLimits
from voxloop.service.limits import Limiter


def app_with(limits: Limiter) -> tuple[Starlette, list[str]]:
    served: list[str] = []

    async def handler(websocket: WebSocket, backends: object) -> None:
        served.append(websocket.url.path)
        await websocket.send_text("hello")
        await asyncio.sleep(3600)  # held open: the key's session stays counted

    app = Starlette()
    app.state.keys = KeyCheck(["good"], defaults=KeyLimits(max_sessions=1))
    app.state.limits, app.state.cors_origins, app.state.backends = limits, [], SimpleNamespace()
    app.router.add_websocket_route(
        "/ws/tts", GuardedRoute("/ws/tts", handler, lambda m: f"ERR: {m}", http_refusals=True)
    )
    app.router.add_websocket_route("/other", GuardedRoute("/other", handler, lambda m: f"ERR: {m}"))
    return app, served


def refusal(client: TestClient, url: str) -> tuple[int, dict]:
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect(url):
            pass
    return refused.value.status_code, refused.value.json()


def test_refusals_are_http_statuses_before_accept() -> None:
    limits = Limiter()
    app, served = app_with(limits)
    with TestClient(app) as client:
        status, body = refusal(client, "/ws/tts?api_key=bad")
        assert status == 401 and body["error"]["type"] == "unauthorized" and body["error"]["message"]
        status, _ = refusal(client, "/ws/tts")
        assert status == 401
        with client.websocket_connect("/ws/tts?api_key=good") as first:
            assert first.receive_text() == "hello"
            status, body = refusal(client, "/ws/tts?api_key=good")
            assert status == 429 and body["error"]["type"] == "rate_limited", body
        limits.draining = True
        status, body = refusal(client, "/ws/tts?api_key=good")
        assert status == 503 and body["error"]["type"] == "unavailable", body
        # A route without http_refusals still accepts, says why in its own shape, and closes.
        with client.websocket_connect("/other?api_key=bad") as other:
            assert other.receive_text().startswith("ERR: unauthorized")
    assert served == ["/ws/tts"]
