"""The shared WebSocket gate: origin, API key and session limits for every protocol route.

``GuardedRoute`` wraps a protocol handler ``(websocket, backends)``. Before the handler runs it
checks the Origin (when allowed origins are configured) and the key, and takes a :class:`Lease`
(refusals are sent in the protocol's error shape, then the socket closes). While it runs, each
client message is metered (over the key's rate it is dropped and answered with an error, at most
once a second), and when the lease ends (key revoked, idle, too long, server draining) the client
gets the reason in its protocol's shape and a close code (1001 when the server shuts down).

Protocols that authenticate in their first message use the same parts by hand:
``await keys.identify(key)``, ``await limits.open_session(info)`` and :func:`run_leased`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voxloop.service.auth import KeyCheck
from voxloop.service.limits import Lease, LimitExceeded
from voxloop.service.metrics import ERRORS, SESSIONS

log = logging.getLogger(__name__)

ErrorShape = Callable[[str], str]
Handler = Callable[[WebSocket, Any], Awaitable[None]]
GRACE_S = 1.0  # after the close frame, time the handler gets to finish on its own
REFUSALS = {401: "unauthorized", 403: "forbidden", 429: "rate_limited", 503: "unavailable"}  # HTTP
GONE_GRACE_S = 5.0  # after the client vanished (its slot is free already), before cancelling
CLIENT_GONE = "client disconnected"


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


class Connection:
    """A client's socket as its session sees it, tied to the session's lease: the first sign that
    the client is gone (a disconnect message, from a close, a TCP reset or a missed ping; or a
    send that fails) ends the lease, so its key's slot returns whatever the handler is doing."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.lease: Lease | None = None
        self.gone = False

    def hold(self, lease: Lease) -> None:
        self.lease = lease
        if self.gone:
            self.lost()

    def lost(self) -> None:
        self.gone = True
        # A lease the server ended already (drain, revocation) closes once its session is done:
        # a drain waits for that, so no model work outlives the server.
        if self.lease is not None and not self.lease.ended.is_set():
            self.lease.end(CLIENT_GONE, 1000)
            self.lease.close()  # the slot is free now; the session finishes in the background

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.lost()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self._send(message)
        except Exception:
            self.lost()
            raise


def hold_connection(websocket: WebSocket, lease: Lease) -> None:
    """Ties ``lease`` to the socket's :class:`Connection` (routes that open the lease late: Soca)."""
    connection: Connection | None = getattr(websocket.state, "connection", None)
    if connection is not None:
        connection.hold(lease)


async def run_leased(lease: Lease, work: Awaitable[None], on_end: Callable[[Lease], Awaitable[None]]) -> None:
    """Runs ``work`` (the session) until it finishes or the lease ends; in the latter case
    ``on_end(lease)`` tells the client ``lease.end_reason`` and closes, the session gets a moment
    to finish, then it is cancelled. The lease is closed on every path, before waiting for a
    cancelled session that is slow to stop."""
    task = asyncio.ensure_future(work)
    ended = asyncio.create_task(lease.ended.wait())
    try:
        await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and lease.end_reason == CLIENT_GONE:
            await asyncio.wait({task}, timeout=GONE_GRACE_S)  # it is closing up on its own
        elif not task.done():
            try:
                await asyncio.wait_for(on_end(lease), GRACE_S * 2)
            except Exception as exc:  # the client may be gone already
                log.debug("telling the client failed: %s", exc)
            await asyncio.wait({task}, timeout=GRACE_S)
    finally:
        for pending in (task, ended):
            pending.cancel()
        await asyncio.wait({task, ended}, timeout=GRACE_S)
        lease.close()  # the slot is back even if the cancelled session is slow to stop
        if not task.done():
            log.warning("a session did not stop within %g s of being cancelled", GRACE_S)
            await asyncio.wait({task})  # its cleanup (models released) finishes before we return
    if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
        if lease.end_reason == CLIENT_GONE or isinstance(exc, WebSocketDisconnect):
            log.debug("session ended by a send after the client left: %r", exc)  # not a fault
        else:
            log.error("session failed", exc_info=exc)


class GuardedRoute:
    """An ASGI app for one WebSocket path (mount it with ``router.add_websocket_route``)."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        error_shape: ErrorShape,
        subprotocol: str | None = None,
        http_refusals: bool = False,
    ) -> None:
        self.path, self.handler, self.error_shape = path, handler, error_shape
        self.subprotocol = subprotocol  # accepted when the client offers it (OpenAI's "realtime")
        # Refuse at the handshake with an HTTP status (401/403/429/503) and a JSON body, as the
        # Lokutor SDKs expect, instead of accepting the socket to send an error and close it.
        self.http_refusals = http_refusals

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

        connection = Connection(receive, send)
        receive, send = connection.receive, connection.send
        websocket = WebSocket(scope, metered, send)
        if not origin_allowed(websocket, state.cors_origins):
            await self.refuse(websocket, "forbidden: origin not allowed", "forbidden", 1008, 403)
            return
        keys: KeyCheck = state.keys
        try:
            info = await keys.identify(keys.key_of(websocket))
            if info is None:
                await self.refuse(
                    websocket, "unauthorized: missing or invalid API key", "unauthorized", 1008, 401
                )
                return
            lease = await state.limits.open_session(info)
        except LimitExceeded as exc:
            await self.refuse(websocket, exc.message, "rate_limited", exc.close_code, exc.status)
            return
        websocket.state.lease = lease
        connection.hold(lease)
        await websocket.accept(
            self.chosen_subprotocol(websocket), headers=[(b"x-voxloop-session", lease.session_id.encode())]
        )
        SESSIONS.labels(self.path).inc()
        try:
            await run_leased(lease, self.handler(websocket, state.backends), self.tell_end(websocket))
        finally:
            SESSIONS.labels(self.path).dec()

    async def refuse(self, websocket: WebSocket, message: str, kind: str, code: int, status: int) -> None:
        ERRORS.labels(self.path, kind).inc()
        if self.http_refusals and "websocket.http.response" in websocket.scope.get("extensions", {}):
            body = {"error": {"type": REFUSALS.get(status, kind), "message": message, "status": status}}
            await websocket.send_denial_response(JSONResponse(body, status))
            return
        await websocket.accept(self.chosen_subprotocol(websocket))
        await websocket.send_text(self.error_shape(message))
        await websocket.close(code=code)

    def tell_end(self, websocket: WebSocket) -> Callable[[Lease], Awaitable[None]]:
        async def tell(lease: Lease) -> None:
            if websocket.application_state == WebSocketState.CONNECTED:
                await websocket.send_text(self.error_shape(lease.end_reason))
                await websocket.close(code=lease.close_code, reason=lease.end_reason[:120])

        return tell
