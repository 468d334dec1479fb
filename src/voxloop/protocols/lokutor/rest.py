"""Lokutor HTTP endpoints: ``POST /stt/transcribe``, ``GET /voices``, ``GET /languages``."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from voxloop.audio.pcm import AudioFormatError, pcm16_to_float, read_wav, resample
from voxloop.backends import workers
from voxloop.protocols.common import check_sample_rate, parse_json
from voxloop.protocols.lokutor.common import check_keyterms, check_stt_language
from voxloop.service.auth import require_key
from voxloop.service.errors import ApiError, read_body
from voxloop.service.limits import LimitExceeded
from voxloop.service.metrics import STT_LATENCY

router = APIRouter(dependencies=[Depends(require_key)])

MAX_AUDIO_SECONDS = 600
MAX_BODY_BYTES = 40 << 20  # base64 of 10 minutes of 16-bit 16 kHz audio is ~26 MB


def decode_audio(body: dict[str, Any]) -> tuple[np.ndarray, int]:
    audio_b64 = body.get("audio")
    if not isinstance(audio_b64, str) or not audio_b64:
        raise ApiError(400, "invalid_request", "'audio' must be a non-empty base64 string")
    try:
        data = base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_audio", f"'audio' is not valid base64: {exc}") from exc
    audio_format = body.get("format", "wav")
    try:
        if audio_format == "wav":
            samples, rate = read_wav(data)
        elif audio_format in ("pcm16", "pcm", "s16le"):
            rate = check_sample_rate(body.get("sample_rate"))
            samples = pcm16_to_float(data)
        else:
            raise ApiError(
                400, "invalid_request", f"unsupported format {audio_format!r}; use 'wav' or 'pcm16'"
            )
    except (AudioFormatError, ValueError) as exc:
        raise ApiError(400, "invalid_audio", str(exc)) from exc
    if not 1000 <= rate <= 192000:
        raise ApiError(400, "invalid_audio", f"implausible sample rate {rate}")
    if len(samples) > MAX_AUDIO_SECONDS * rate:
        raise ApiError(413, "too_large", f"audio longer than {MAX_AUDIO_SECONDS} s")
    return samples, rate


@router.post("/stt/transcribe")
async def transcribe(request: Request) -> JSONResponse:
    raw = await read_body(request, MAX_BODY_BYTES)
    try:
        body = parse_json(raw.decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "request body must be JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    try:
        language = check_stt_language(body.get("language"))
        keyterms = check_keyterms(body.get("keyterms"))
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    samples, rate = decode_audio(body)
    try:  # the clip counts against the key's audio budget like streamed audio
        request.app.state.limits.spend_audio(request.state.key, len(samples) / rate)
    except LimitExceeded as exc:
        raise ApiError(exc.status, "rate_limited", exc.message) from exc
    stt = request.app.state.backends.stt
    started = time.perf_counter()

    def run():
        return stt.transcribe(resample(samples, rate, stt.sample_rate), language, keyterms=keyterms)

    transcript = await workers.run_in(workers.SPEECH, run)
    latency = time.perf_counter() - started
    STT_LATENCY.observe(latency)
    return JSONResponse(
        {
            "text": transcript.text,
            "latency_ms": round(latency * 1000, 1),
            "engine": transcript.engine,
            "sample_rate": rate,
            "language": transcript.language,
            "duration_seconds": round(len(samples) / rate, 3),
            "segments": [
                {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                for s in transcript.segments
            ],
        }
    )


@router.get("/voices")
async def voices(request: Request) -> JSONResponse:
    return JSONResponse({"voices": request.app.state.backends.speaker.catalogue()})


@router.get("/languages")
async def languages(request: Request) -> JSONResponse:
    codes = request.app.state.backends.speaker.languages()
    return JSONResponse({"languages": [{"code": code} for code in codes]})
