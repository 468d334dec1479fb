"""The Socket.IO server for SelamGPT clients, mounted at ``/socket.io/`` on the main app.

python-socketio handles the transport (websocket, and polling for clients that start with it);
events of one client are handled in order (``async_handlers=False``), each client in its own
reader task, so a slow or hostile client holds up only itself.

Each connection holds one lease of its API key (one "session" against the key's max sessions,
whatever number of start_session it runs): every event counts against the key's message rate and
every audio_chunk against its audio budget (over either: an ``authorization_error`` with code
``rate_limited``, the event dropped); when the lease ends (key revoked, idle, session time limit,
server draining) the client gets an ``error`` with the reason and is disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

import socketio
from fastapi import FastAPI
from starlette.requests import HTTPConnection

from voxloop.protocols.selam.agent import SelamAgent
from voxloop.protocols.selam.options import SelamError, voice_id
from voxloop.service.errors import QuietLog
from voxloop.service.guard import origin_allowed
from voxloop.service.limits import Lease, LimitExceeded
from voxloop.service.metrics import ERRORS, SESSIONS

log = logging.getLogger(__name__)

NAMESPACE = "/v1/audio/agent"
MAX_MESSAGE = 4 << 20  # one Socket.IO message; an audio_chunk holds at most 1 MiB of PCM
MAX_QUEUED = 64  # packets waiting for a client before its emits wait (bounded memory)
STALL_S = 10.0  # a client that reads nothing for this long is disconnected
PING_INTERVAL_S, PING_TIMEOUT_S = 10, 10
REFUSE_AFTER_S = 0.5  # a refused client is disconnected this long after its error
RATE_LIMITED, SHUTTING_DOWN, SERVER_BUSY = "rate_limited", "server_shutting_down", "server_busy"  # codes


class SelamNamespace(socketio.AsyncNamespace):
    def __init__(self, app: FastAPI) -> None:
        super().__init__(NAMESPACE)
        self.app = app
        self.agents: dict[str, SelamAgent] = {}
        self.voices: dict[str, str] = {}  # the voice each client named when connecting
        self.leases: dict[str, Lease] = {}
        self.watches: dict[str, asyncio.Task[None]] = {}  # each lease's end, told to its client
        self.connected: set[str] = set()  # clients whose connect ran, refused ones too
        self.hanging_up: set[asyncio.Task[None]] = set()

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Every event of the namespace: known ones run, errors go back in the seed's shape."""
        # A client may also emit events named "connect" or "disconnect": those are unknown events.
        if event == "connect" and args[0] not in self.connected:
            self.connected.add(args[0])
            return await self.connect(args[0], args[1], args[2] if len(args) > 2 else None)
        if event == "disconnect" and not self.server.manager.is_connected(args[0], NAMESPACE):
            self.connected.discard(args[0])  # python-socketio marks a real disconnect before this call
            return await self.disconnect_agent(args[0])
        sid, data = args[0], args[1] if len(args) > 1 else None
        agent = self.agents.get(sid)
        if agent is None:  # refused connections get nothing more
            return None
        if not await self.within_message_rate(sid):
            return None
        try:
            if event == "start_session":
                await agent.start_session(data, self.voices.get(sid) or self.default_voice)
            elif event == "audio_chunk":
                await agent.audio_chunk(data)
            elif event == "control":
                await agent.control(data)
            elif event == "end_session":
                await agent.end_session(data, self.owner_exists)
            else:
                raise SelamError("validation_error", f"unknown event {event!r}", "unknown_event")
        except SelamError as error:
            await self.send_error(sid, error)
        except Exception:  # a bug must not end the connection silently
            log.exception("SelamGPT event %s failed", event)
            await self.send_error(sid, SelamError("session_error", f"{event} failed on the server"))
        return None

    @property
    def default_voice(self) -> str:
        return self.app.state.backends.settings.default_voice

    async def within_message_rate(self, sid: str) -> bool:
        """Over the key's message rate the event is dropped and the client told (once a second)."""
        lease = self.leases.get(sid)
        if lease is None:
            return True
        try:
            lease.message()
            return True
        except LimitExceeded as exc:
            ERRORS.labels(NAMESPACE, "rate_limited").inc()
            if lease.report_due():
                error = SelamError("authorization_error", exc.message, RATE_LIMITED)
                await self.send(sid, "error", error.payload())
            return False

    async def refuse(self, sid: str, error: SelamError) -> bool:
        await self.send_error(sid, error)
        # Socket.IO acknowledged the connect already (always_connect), so the client sees this
        # `error`; the disconnect follows a moment later, because python-socketio ignores a
        # disconnect that arrives while its connect() call is still returning.
        asyncio.get_running_loop().call_later(REFUSE_AFTER_S, self.hang_up_soon, sid)
        return True

    async def connect(self, sid: str, environ: dict[str, Any], auth: object) -> bool:
        scope = environ.get("asgi.scope", {})
        connection = HTTPConnection(scope)
        state = self.app.state
        if not origin_allowed(connection, state.cors_origins):
            error = SelamError("authorization_error", "forbidden: origin not allowed", "forbidden_origin")
            return await self.refuse(sid, error)
        key = _auth_key(auth)
        try:
            info = await state.keys.identify(key if key is not None else state.keys.key_of(connection))
            if info is None:
                error = SelamError("authentication_error", "invalid or missing API key", "invalid_api_key")
                return await self.refuse(sid, error)
            lease = await state.limits.open_session(info)
        except LimitExceeded as exc:
            if exc.status == 503:
                code = SHUTTING_DOWN if state.limits.draining else SERVER_BUSY
                return await self.refuse(sid, SelamError("session_error", exc.message, code))
            return await self.refuse(sid, SelamError("authorization_error", exc.message, RATE_LIMITED))
        self.leases[sid] = lease
        self.watches[sid] = asyncio.create_task(self.watch(sid, lease))
        backends = self.app.state.backends
        voice = connection.query_params.get("voice") or (
            auth.get("voice") if isinstance(auth, dict) else None
        )
        agent = SelamAgent(
            backends, lambda name, data: self.send(sid, name, data), lambda: self.hang_up(sid), lease, state
        )
        self.agents[sid] = agent
        SESSIONS.labels(NAMESPACE).inc()
        message = "Connected to the voxloop voice agent. Send start_session to begin."
        try:
            if voice:
                voice_id(voice, backends.speaker)  # refused now, rather than at start_session
                self.voices[sid] = voice
        except SelamError as error:
            await self.send_error(sid, error)  # start_session may still name a good voice
            message = f"{message} The voice in the URL was refused: {error.message}"
        await self.send(
            sid, "connected", {"status": "connected", "sid": sid, "voice": voice, "message": message}
        )
        return True

    async def disconnect_agent(self, sid: str) -> None:
        agent = self.agents.pop(sid, None)
        self.voices.pop(sid, None)
        watch = self.watches.pop(sid, None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        lease = self.leases.pop(sid, None)
        if lease is not None:  # the slot returns now, whatever closing the agent takes
            lease.close()
        if agent is not None:
            SESSIONS.labels(NAMESPACE).dec()
            await agent.close()

    async def watch(self, sid: str, lease: Lease) -> None:
        """When the lease ends (key revoked, idle, too long, server draining): tell, then hang up."""
        await lease.ended.wait()
        kind, code = lease_end_error(lease)
        await self.send_error(sid, SelamError(kind, lease.end_reason, code))
        agent = self.agents.get(sid)
        if agent is not None:
            await agent.close()  # the models are free before the client is gone
        await self.disconnect(sid)

    def owner_exists(self, session_id: str) -> bool:
        return any(agent.session_id == session_id for agent in self.agents.values())

    async def send(self, sid: str, event: str, data: dict[str, Any]) -> None:
        """Emits to one client once its backlog is short: a client that stops reading is dropped."""
        server: socketio.AsyncServer = self.server
        eio_sid = server.manager.eio_sid_from_sid(sid, NAMESPACE)
        socket = server.eio.sockets.get(eio_sid) if eio_sid else None
        waited = 0.0
        while socket is not None and socket.queue.qsize() > MAX_QUEUED and not socket.closed:
            if waited > STALL_S:
                log.warning("SelamGPT client %s read nothing for %.0f s: disconnecting", sid, STALL_S)
                await self.hang_up(sid)
                return
            await asyncio.sleep(0.05)
            waited += 0.05
        await self.emit(event, data, to=sid)

    async def send_error(self, sid: str, error: SelamError) -> None:
        ERRORS.labels(NAMESPACE, error.kind).inc()
        await self.send(sid, "error", error.payload())

    async def hang_up(self, sid: str) -> None:
        self.hang_up_soon(sid)

    def hang_up_soon(self, sid: str) -> None:
        task = asyncio.get_running_loop().create_task(self.disconnect(sid))  # not inside its own task
        self.hanging_up.add(task)
        task.add_done_callback(self.hanging_up.discard)


def lease_end_error(lease: Lease) -> tuple[str, str]:
    """The seed's error type and a code for why the lease ended."""
    if lease.close_code == 1001:
        return "session_error", SHUTTING_DOWN
    if lease.end_reason == "API key revoked":
        return "authentication_error", "key_revoked"
    return "session_error", "session_limit"


def _auth_key(auth: object) -> str | None:
    """socket.io-client's ``auth: {api_key}`` (or ``token``); else the query / headers are checked."""
    if isinstance(auth, dict):
        for name in ("api_key", "apiKey", "token"):
            if isinstance(auth.get(name), str) and auth[name]:
                return auth[name]
    return None


class SocketServer(socketio.AsyncServer):
    """python-socketio raises on a malformed Socket.IO packet (and logs a traceback); here the
    client is answered instead: a SelamGPT ``error`` when it has a session, else it is
    disconnected. Either way one line is logged, at most once a second."""

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            self._binary_packet.pop(eio_sid, None)  # a half-received binary packet goes too
            MALFORMED.warning("malformed Socket.IO packet from %s: %s", eio_sid, _brief(exc))
            sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
            namespace = self.namespace_handlers.get(NAMESPACE)
            if sid is not None and isinstance(namespace, SelamNamespace) and sid in namespace.agents:
                error = SelamError("validation_error", "malformed Socket.IO packet", "malformed_packet")
                await namespace.send_error(sid, error)
            else:
                await self.eio.disconnect(eio_sid)


MALFORMED = QuietLog(log)


def engine_io_frame_ok(text: str) -> bool:
    """Whether python-engineio can decode a WebSocket text frame: it decodes the frame before
    its own error handling, so an empty one or a bad type would end in an ASGI traceback."""
    if not text:
        return False
    if text[0] == "b":
        try:
            base64.b64decode(text[1:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    return text[0].isdigit() and text[0].isascii()


def checked_frames(app: Any) -> Any:
    """The Socket.IO ASGI app behind a check of each WebSocket text frame: a frame Engine.IO
    cannot decode ends the connection (a disconnect in place of the frame), with one log line."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await app(scope, receive, send)

        async def checked() -> dict[str, Any]:
            message = await receive()
            text = message.get("text") if message["type"] == "websocket.receive" else None
            if text is not None and not engine_io_frame_ok(text):
                MALFORMED.warning("malformed Engine.IO frame (%d characters): closing", len(text))
                return {"type": "websocket.disconnect", "code": 1002}
            return message

        return await app(scope, checked, send)

    return guarded


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def mount_selam(app: FastAPI) -> None:
    """Serves the SelamGPT namespace at /socket.io/ on the same port as the rest of the API."""
    server = SocketServer(
        async_mode="asgi",
        cors_allowed_origins="*",  # browsers on any origin: the API key is the gate
        async_handlers=False,  # one client's events in order: audio must not be reordered
        always_connect=True,  # the connect is acknowledged first, so a refusal can carry `error`
        max_http_buffer_size=MAX_MESSAGE,
        ping_interval=PING_INTERVAL_S,  # a dead peer is disconnected (and its slot freed) within ~20 s
        ping_timeout=PING_TIMEOUT_S,
        logger=MALFORMED,  # what the libraries log is mostly client-made: one line, rate-limited
        engineio_logger=MALFORMED,
    )
    server.register_namespace(SelamNamespace(app))
    app.mount("/socket.io", checked_frames(socketio.ASGIApp(server, socketio_path=None)))
