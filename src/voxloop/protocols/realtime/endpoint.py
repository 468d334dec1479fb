"""``/v1/realtime``: authentication, dialect choice and the session's lifetime.

The key comes as ``Authorization: Bearer`` (the SDKs), the ``api_key`` query parameter, or, from
browsers that cannot set headers, the subprotocol ``openai-insecure-api-key.<key>`` next to
``realtime`` (accepted with subprotocol ``realtime``). A refused key gets an ``error`` event, then
close code 1008.
"""

from __future__ import annotations

import contextlib
import json

from starlette.websockets import WebSocket

from voxloop.protocols.common import new_session, run_session
from voxloop.protocols.realtime.connection import RealtimeConnection
from voxloop.protocols.realtime.wire import error_event, new_id
from voxloop.server.metrics import ERRORS, SESSIONS

PATH = "/v1/realtime"
KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"
DEFAULT_MODEL = "gpt-realtime"


def subprotocols(websocket: WebSocket) -> list[str]:
    header = websocket.headers.get("sec-websocket-protocol", "")
    return [name.strip() for name in header.split(",") if name.strip()]


def authorized(websocket: WebSocket, protocols: list[str]) -> bool:
    keys = websocket.app.state.keys
    offered = [name[len(KEY_PROTOCOL) :] for name in protocols if name.startswith(KEY_PROTOCOL)]
    if offered:
        return keys.accepts(offered[0])
    return keys.allows(websocket)


def is_beta(websocket: WebSocket, protocols: list[str]) -> bool:
    """Beta event names for clients that ask for the beta API; GA names otherwise."""
    return "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_PROTOCOL in protocols


async def realtime_endpoint(websocket: WebSocket) -> None:
    protocols = subprotocols(websocket)
    await websocket.accept(subprotocol="realtime" if "realtime" in protocols else None)
    if not authorized(websocket, protocols):
        ERRORS.labels(PATH, "unauthorized").inc()
        refusal = error_event("missing or invalid API key", "invalid_api_key")
        await websocket.send_text(json.dumps({**refusal, "event_id": new_id("event")}))
        await websocket.close(code=1008)
        return
    model = websocket.query_params.get("model") or DEFAULT_MODEL
    SESSIONS.labels(PATH).inc()
    # No spoken filler while a client runs a tool: Realtime has no audio between that response's
    # end and the client's next response.create.
    session = new_session(
        websocket.app.state.backends, input_rate=24000, output_rate=24000, tool_filler=False
    )
    try:
        connection = RealtimeConnection(websocket, session, is_beta(websocket, protocols), model[:100])
        try:
            await connection.start()
        except BaseException:
            await session.close()
            raise
        stalled = await run_session(session, connection.receive(), connection.forward())
        if stalled:
            with contextlib.suppress(Exception):
                await websocket.close(code=1008, reason="client stopped reading")
    finally:
        SESSIONS.labels(PATH).dec()
