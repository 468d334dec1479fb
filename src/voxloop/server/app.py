"""The ASGI application: routes, auth, readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voxloop import __version__
from voxloop.backends.registry import Backends
from voxloop.config import Settings
from voxloop.engine.tools import builtin_tools
from voxloop.protocols.lokutor import rest as lokutor_rest
from voxloop.protocols.lokutor.agent import serve_agent
from voxloop.protocols.lokutor.stt import serve_stt
from voxloop.protocols.lokutor.tts import serve_tts
from voxloop.protocols.realtime import endpoint as realtime
from voxloop.protocols.selam.server import mount_selam
from voxloop.protocols.soca.voice import SocaRoute
from voxloop.protocols.voice_agent import agent as voice_agent
from voxloop.service.admission import Admission
from voxloop.service.auth import KeyCheck, require_key
from voxloop.service.cluster import build_stores
from voxloop.service.errors import ApiError, install_error_handlers
from voxloop.service.guard import GuardedRoute
from voxloop.service.keys import KeyLimits
from voxloop.service.limits import Limiter

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

Handler = Callable[[WebSocket, Backends], Awaitable[None]]


def create_app(settings: Settings | None = None, backends: Backends | None = None) -> FastAPI:
    settings = settings or Settings()
    defaults = KeyLimits(settings.key_max_sessions, settings.key_messages_per_s, settings.key_audio_s_per_min)
    stores = build_stores(settings, defaults, load=lambda: node_load(app))
    keys = KeyCheck(settings.api_keys, stores.keys, defaults)
    limits = Limiter(stores.keys, settings.max_session_s, settings.idle_timeout_s, stores.book)
    limits.on_revoked = lambda _key_id: keys.forget()
    limits.admission = Admission(settings.max_conversations, settings.admission_max_lag_s)
    history = stores.history
    builtin_tools.subset(settings.server_tools)  # a misspelt tool name fails at start, not per session

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backends = backends or Backends.create(settings)
        app.state.ready = asyncio.Event()
        app.state.load_error = None
        await stores.open()  # Redis and PostgreSQL, when configured: unreachable fails the start
        await keys.warn_if_open()
        loading = asyncio.create_task(load(app))
        await limits.start()
        yield
        loading.cancel()
        await limits.drain(settings.drain_timeout_s)  # without the CLI's server (tests, other ASGI hosts)
        await limits.stop()
        await stores.close()

    async def load(app: FastAPI) -> None:
        try:
            if settings.warmup:
                await asyncio.to_thread(app.state.backends.warmup)
            app.state.ready.set()
            log.info("voxloop %s ready on the embedded models", __version__)
        except Exception as exc:
            app.state.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the models failed")

    app = FastAPI(title="voxloop", version=__version__, lifespan=lifespan)
    app.state.keys, app.state.limits, app.state.history = keys, limits, history
    app.state.resume, app.state.stores = stores.resume, stores
    app.state.cors_origins = [origin.rstrip("/") for origin in settings.cors_origins]
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=app.state.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            expose_headers=["X-Voxloop-Session"],
        )

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        state = request.app.state
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=500)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """For a load balancer: 503 while loading, draining or saturated (send the next session
        elsewhere), 200 otherwise; the body has the load figures."""
        state = request.app.state
        body = limits.admission.load(len(limits.leases())) if limits.admission else {}
        body["draining"] = limits.draining
        ready = state.ready.is_set() and not limits.draining and not body.get("saturated")
        body["status"] = "ready" if ready else "unavailable"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/cluster/nodes", dependencies=[Depends(require_key)])
    async def cluster_nodes() -> JSONResponse:
        """The nodes sharing this node's Redis, with their load (this node alone without Redis)."""
        nodes = await stores.registry.nodes() if stores.registry else [{"node_id": "local", **node_load(app)}]
        return JSONResponse({"nodes": nodes})

    if not settings.metrics_port:  # else the CLI serves them on their own address
        metrics_guard = [Depends(require_key)] if settings.metrics_require_key else []

        @app.get("/metrics", dependencies=metrics_guard)
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(lokutor_rest.router)

    @app.get("/v1/sessions/{session_id}", dependencies=[Depends(require_key)])
    async def session_history(session_id: str, request: Request) -> JSONResponse:
        who = request.state.key
        # A stored key sees its own turns, row by row; configuration keys are the operator's: all.
        owner = who.id if who.stored else None
        turns = await history.read_turns(session_id, owner) if history else []
        if not turns:
            raise ApiError(404, "not_found", "no conversation history for this session")
        return JSONResponse({"session_id": session_id, "turns": [turn.as_json() for turn in turns]})

    def websocket_route(
        path: str,
        handler: Handler,
        error_shape: Callable[[str], str],
        subprotocol: str | None = None,
        http_refusals: bool = False,
    ) -> None:
        """Origin, key, limits, revocation and drain for ``handler``: see service/guard.py."""
        route = GuardedRoute(path, handler, error_shape, subprotocol, http_refusals)
        app.router.add_websocket_route(path, route)

    def json_error(message: str) -> str:
        return json.dumps({"type": "error", "data": message})

    # Lokutor's SDKs read a refused handshake's HTTP status (seed 001: 401, 429, 503).
    for path in ("/ws", "/ws/tts"):
        websocket_route(path, serve_tts, lambda message: f"ERR: {message}", http_refusals=True)
    websocket_route("/ws/stt", serve_stt, json_error, http_refusals=True)
    websocket_route("/ws/agent", serve_agent, json_error, http_refusals=True)
    websocket_route(realtime.PATH, realtime.serve_realtime, realtime.error_shape, realtime.SUBPROTOCOL)
    websocket_route("/v1/voice-agent", voice_agent.serve_voice_agent, voice_agent.error_shape)
    websocket_route("/v1/video-agent", voice_agent.serve_video_agent, voice_agent.error_shape)
    for path in ("/v1/voice-ws", "/chat/agent/voice-ws"):  # Soca: the start message carries the token
        app.router.add_websocket_route(path, SocaRoute(path))
    mount_selam(app)  # SelamGPT's Socket.IO voice agent at /socket.io/, namespace /v1/audio/agent
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="playground")  # last: routes win
    return app


def node_load(app: FastAPI) -> dict[str, object]:
    """This node's figures for the cluster registry."""
    limits = app.state.limits
    ready = getattr(app.state, "ready", None)
    return {
        "sessions": len(limits.leases()),
        "draining": limits.draining,
        "ready": bool(ready and ready.is_set()) and not limits.draining,
    }
