"""``/v1/realtime``: dialect choice and the session's lifetime.

The shared gate (service/guard.py) checks the key: ``Authorization: Bearer`` (the SDKs), the
``api_key`` query parameter, or, from browsers that cannot set headers, the subprotocol
``openai-insecure-api-key.<key>`` next to ``realtime`` (accepted with subprotocol ``realtime``).
A refused key gets an ``error`` event (code ``invalid_api_key``), then close code 1008.
"""

from __future__ import annotations

import contextlib
import json

from starlette.websockets import WebSocket

from voxloop.backends.registry import Backends
from voxloop.protocols.common import keep_history, new_session, run_session
from voxloop.protocols.realtime.connection import RealtimeConnection
from voxloop.protocols.realtime.wire import error_event, new_id
from voxloop.service.guard import lease_of

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
BETA_PROTOCOL = "openai-beta.realtime-v1"
DEFAULT_MODEL = "gpt-realtime"
# The gate's refusals and endings, as OpenAI error codes.
ERROR_CODES = {
    "unauthorized": "invalid_api_key",
    "forbidden": "forbidden",
    "rate": "rate_limit_exceeded",
    "server at capacity": "server_busy",
}


def error_shape(message: str) -> str:
    code = next((code for start, code in ERROR_CODES.items() if message.startswith(start)), "session_ended")
    return json.dumps({**error_event(message, code), "event_id": new_id("event")})


def subprotocols(websocket: WebSocket) -> list[str]:
    header = websocket.headers.get("sec-websocket-protocol", "")
    return [name.strip() for name in header.split(",") if name.strip()]


def is_beta(websocket: WebSocket, protocols: list[str]) -> bool:
    """Beta event names for clients that ask for the beta API; GA names otherwise."""
    return "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_PROTOCOL in protocols


async def serve_realtime(websocket: WebSocket, backends: Backends) -> None:
    model = websocket.query_params.get("model") or DEFAULT_MODEL
    # No spoken filler while a client runs a tool: Realtime has no audio between that response's
    # end and the client's next response.create.
    session = new_session(backends, input_rate=24000, output_rate=24000, tool_filler=False)
    connection = RealtimeConnection(
        websocket, session, is_beta(websocket, subprotocols(websocket)), model[:100]
    )
    lease = lease_of(websocket)
    connection.lease = lease
    keep_history(session, websocket.app.state, lease, connection.history_error)
    try:
        await connection.start()
    except BaseException:
        await session.close()
        raise
    if await run_session(session, connection.receive(), connection.forward()):
        with contextlib.suppress(Exception):
            await websocket.close(code=1008, reason="client stopped reading")
