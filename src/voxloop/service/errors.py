"""The HTTP error shape: ``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from voxloop.service.metrics import ERRORS, endpoint_of


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        ERRORS.labels(endpoint_of(request.scope), exc.kind).inc()
        return error_response(exc.status, exc.kind, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        ERRORS.labels(endpoint_of(request.scope), "invalid_request").inc()
        return error_response(422, "invalid_request", str(exc.errors()[:3]))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class QuietLog:
    """A logger for what clients can trigger at will (malformed packets): one line, no traceback,
    at most one a second; the lines left out are counted in the next one. Also stands in for the
    logger python-socketio and python-engineio are given, whose ``exception`` would print one
    traceback per bad packet."""

    def __init__(self, log: logging.Logger, every_s: float = 1.0) -> None:
        self.log, self.every_s = log, every_s
        self.last = -every_s
        self.skipped = 0

    def warning(self, message: str, *args: Any, **_: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.skipped += 1
            return
        self.last = now
        if self.skipped:
            message, args = message + " (and %d more like it)", (*args, self.skipped)
            self.skipped = 0
        self.log.warning(message, *args)

    error = exception = critical = warning

    def info(self, *_: Any, **__: Any) -> None:
        pass

    debug = info

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING
