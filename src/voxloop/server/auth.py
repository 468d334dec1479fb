"""API keys: taken from the ``X-API-Key`` header, an ``Authorization: Bearer`` header, or the
``api_key`` query parameter (browsers cannot set WebSocket headers)."""

from __future__ import annotations

import hmac
import logging

from starlette.requests import HTTPConnection, Request

from voxloop.server.errors import ApiError
from voxloop.server.metrics import ERRORS

log = logging.getLogger(__name__)


class KeyCheck:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]
        if not keys:
            log.warning("VOXLOOP_API_KEYS is empty: every client is accepted without a key")

    @staticmethod
    def key_of(connection: HTTPConnection) -> str | None:
        key = connection.headers.get("x-api-key") or connection.query_params.get("api_key")
        if key:
            return key
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None

    def allows(self, connection: HTTPConnection) -> bool:
        return self.accepts(self.key_of(connection))

    def accepts(self, key: str | None) -> bool:
        """A raw key, for protocols that carry it in a message (Soca's token, Socket.IO's auth)."""
        if not self._keys:
            return True
        raw = (key or "").encode()
        # Compare against every key, so timing does not reveal which prefix matched.
        return any([hmac.compare_digest(raw, accepted) for accepted in self._keys])


def require_key(request: Request) -> None:
    """FastAPI dependency for HTTP API routes: the page, health and metrics stay public."""
    if not request.app.state.keys.allows(request):
        ERRORS.labels(request.url.path, "unauthorized").inc()
        raise ApiError(401, "unauthorized", "missing or invalid API key (X-API-Key or api_key)")
