"""The shared WebSocket gate: origin, API key and session limits for every protocol route.

``GuardedRoute`` wraps a protocol handler ``(websocket, backends)``. Before the handler runs it
checks the Origin (when allowed origins are configured) and the key, and takes a :class:`Lease`
(refusals are sent in the protocol's error shape, then the socket closes). While it runs, each
client message is metered (over the key's rate it is dropped and answered with an error, at most
once a second), and when the lease ends (key revoked, idle, too long, server draining) the client
gets the reason in its protocol's shape and a close code (1001 when the server shuts down).

Protocols that authenticate in their first message use the same parts by hand:
``keys.identify(key)``, ``limits.open_session(info)`` and :func:`run_leased`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from voxloop.server.auth import KeyCheck
from voxloop.server.limits import Lease, LimitExceeded
from voxloop.server.metrics import ERRORS, SESSIONS

log = logging.getLogger(__name__)

ErrorShape = Callable[[str], str]
Handler = Callable[[WebSocket, Any], Awaitable[None]]
GRACE_S = 1.0  # after the close frame, time the handler gets to finish on its own


def lease_of(websocket: WebSocket) -> Lease | None:
    """The session's lease (None for a handler run outside a GuardedRoute, e.g. in unit tests)."""
    return getattr(websocket.state, "lease", None)


def origin_allowed(connection: HTTPConnection, allowed: list[str]) -> bool:
    """Browsers send Origin; other clients do not and are not restricted by it. An Origin naming
    this server itself is allowed too: a page it serves (the playground) is not another site, and
    some clients (python-socketio's websocket-client) send their target's address as Origin."""
    origin = connection.headers.get("origin")
    if not allowed or origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return True
    host = connection.headers.get("host")
    return host is not None and origin.rstrip("/").split("://", 1)[-1] == host


async def run_leased(lease: Lease, work: Awaitable[None], on_end: Callable[[Lease], Awaitable[None]]) -> None:
    """Runs ``work`` (the session) until it finishes or the lease ends; in the latter case
    ``on_end(lease)`` tells the client ``lease.end_reason`` and closes, the session gets a moment
    to finish, then it is cancelled. The lease is closed either way."""
    task = asyncio.ensure_future(work)
    ended = asyncio.create_task(lease.ended.wait())
    try:
        await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            try:
                await asyncio.wait_for(on_end(lease), GRACE_S * 2)
            except Exception as exc:  # the client may be gone already
                log.debug("telling the client failed: %s", exc)
            await asyncio.wait({task}, timeout=GRACE_S)
    finally:
        for pending in (task, ended):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        lease.close()
    if not task.cancelled() and task.exception() is not None:
        log.error("session failed", exc_info=task.exception())


class GuardedRoute:
    """An ASGI app for one WebSocket path (mount it with ``router.add_websocket_route``)."""

    def __init__(
        self, path: str, handler: Handler, error_shape: ErrorShape, subprotocol: str | None = None
    ) -> None:
        self.path, self.handler, self.error_shape = path, handler, error_shape
        self.subprotocol = subprotocol  # accepted when the client offers it (OpenAI's "realtime")

    def chosen_subprotocol(self, websocket: WebSocket) -> str | None:
        offered = websocket.headers.get("sec-websocket-protocol", "").split(",")
        return self.subprotocol if self.subprotocol in {name.strip() for name in offered} else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        lease: Lease | None = None

        async def metered() -> dict[str, Any]:
            while True:
                message = await receive()
                if lease is None or message["type"] != "websocket.receive":
                    return message
                try:
                    lease.message()
                    return message
                except LimitExceeded as exc:  # the message is dropped; the session pays, not the server
                    ERRORS.labels(self.path, "rate_limited").inc()
                    if lease.report_due():
                        await send({"type": "websocket.send", "text": self.error_shape(exc.message)})

        websocket = WebSocket(scope, metered, send)
        if not origin_allowed(websocket, state.cors_origins):
            await self.refuse(websocket, "forbidden: origin not allowed", "forbidden", 1008)
            return
        keys: KeyCheck = state.keys
        info = keys.identify(keys.key_of(websocket))
        if info is None:
            await self.refuse(websocket, "unauthorized: missing or invalid API key", "unauthorized", 1008)
            return
        try:
            lease = state.limits.open_session(info)
        except LimitExceeded as exc:
            await self.refuse(websocket, exc.message, "rate_limited", exc.close_code)
            return
        websocket.state.lease = lease
        await websocket.accept(
            self.chosen_subprotocol(websocket), headers=[(b"x-voxloop-session", lease.session_id.encode())]
        )
        SESSIONS.labels(self.path).inc()
        try:
            await run_leased(lease, self.handler(websocket, state.backends), self.tell_end(websocket))
        finally:
            SESSIONS.labels(self.path).dec()

    async def refuse(self, websocket: WebSocket, message: str, kind: str, code: int) -> None:
        ERRORS.labels(self.path, kind).inc()
        await websocket.accept(self.chosen_subprotocol(websocket))
        await websocket.send_text(self.error_shape(message))
        await websocket.close(code=code)

    def tell_end(self, websocket: WebSocket) -> Callable[[Lease], Awaitable[None]]:
        async def tell(lease: Lease) -> None:
            if websocket.application_state == WebSocketState.CONNECTED:
                await websocket.send_text(self.error_shape(lease.end_reason))
                await websocket.close(code=lease.close_code, reason=lease.end_reason[:120])

        return tell
