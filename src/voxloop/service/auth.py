"""API keys: taken from the ``X-API-Key`` header, an ``Authorization: Bearer`` header, the
``api_key`` query parameter or, as OpenAI's browser clients send it, a WebSocket subprotocol
``openai-insecure-api-key.<key>`` (browsers cannot set WebSocket headers).

Keys come from the configuration (``VOXLOOP_API_KEYS``, for development) and from the key store
(``voxloop keys create``: SQLite, or PostgreSQL with ``VOXLOOP_DATABASE_URL``). With neither, every
client is accepted as ``anonymous``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict

from starlette.requests import HTTPConnection, Request

from voxloop.service.errors import ApiError
from voxloop.service.keys import AsyncKeys, KeyInfo, KeyLimits, KeyStore, SqliteKeys, digest
from voxloop.service.limits import LimitExceeded, StoreUnavailable

log = logging.getLogger(__name__)

CACHE_S = 2.0  # a revoked key is refused for new sessions within this (open ones: the Limiter)
CACHE_SIZE = 1024
KEY_SUBPROTOCOL = "openai-insecure-api-key."


class KeyCheck:
    def __init__(
        self, keys: list[str], store: AsyncKeys | KeyStore | None = None, defaults: KeyLimits | None = None
    ) -> None:
        self.defaults = defaults or KeyLimits()
        self._config = [  # (digest, who)
            (digest(k), KeyInfo(f"config-{digest(k)[:8]}", "config", self.defaults)) for k in keys
        ]
        self.store: AsyncKeys | None = SqliteKeys(store) if isinstance(store, KeyStore) else store
        self._cache: OrderedDict[str, tuple[float, KeyInfo | None]] = OrderedDict()

    async def warn_if_open(self) -> None:
        if not self._config and not (self.store and await self.store.has_active_keys()):
            log.warning("no API keys configured or stored: every client is accepted without a key")

    def forget(self) -> None:
        """Drops cached answers (a key was revoked: it is refused from the next session on)."""
        self._cache.clear()

    @staticmethod
    def key_of(connection: HTTPConnection) -> str | None:
        key = connection.headers.get("x-api-key") or connection.query_params.get("api_key")
        if key:
            return key
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        for name in connection.headers.get("sec-websocket-protocol", "").split(","):
            if name.strip().startswith(KEY_SUBPROTOCOL):
                return name.strip()[len(KEY_SUBPROTOCOL) :] or None
        return None

    async def identify(self, key: str | None) -> KeyInfo | None:
        """Who ``key`` belongs to, or None when it is missing, unknown or revoked; raises
        StoreUnavailable when the key store does not answer."""
        if key is not None and len(key) > 512:
            return None
        wanted = digest(key or "")
        # Compare with every configuration key, so timing does not reveal which one matched.
        matches = [info for accepted, info in self._config if hmac.compare_digest(wanted, accepted)]
        if matches:
            return matches[0]
        if self._config and self.store is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(wanted)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            info = await self.store.identify(key) if key and self.store else None
            if info is None and not self._config and not (self.store and await self.store.has_active_keys()):
                info = KeyInfo("anonymous", "anonymous", self.defaults)  # an open server
        except Exception as exc:
            log.error("key store unavailable: %s", exc)
            raise StoreUnavailable("the key store does not answer") from exc
        self._cache[wanted] = (now, info)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return info

    async def accepts(self, key: str | None) -> bool:
        """A raw key, for protocols that carry it in a message (Soca's token, Socket.IO's auth)."""
        return await self.identify(key) is not None


async def require_key(request: Request) -> None:
    """FastAPI dependency for HTTP API routes: the page and health stay public (metrics too,
    unless VOXLOOP_METRICS_REQUIRE_KEY). Each request counts against its key's message rate (429
    over it). The refusal is counted once, by the ApiError handler."""
    state = request.app.state
    try:
        info = await state.keys.identify(KeyCheck.key_of(request))
    except StoreUnavailable as exc:
        raise ApiError(exc.status, "unavailable", exc.message) from exc
    if info is None:
        raise ApiError(401, "unauthorized", "missing or invalid API key (X-API-Key or api_key)")
    try:
        await state.limits.request(info)
    except LimitExceeded as exc:
        raise ApiError(exc.status, "rate_limited", exc.message) from exc
    request.state.key = info
