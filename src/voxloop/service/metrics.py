"""Prometheus metrics, exposed at ``GET /metrics`` (or on a separate address: VOXLOOP_METRICS_PORT).

Label values come from the server only (route templates, error kinds), never from a client: a
client that invents paths or session ids cannot add series (memory, and a leak of its values).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)

TTS_FIRST_AUDIO = Histogram(
    "voxloop_tts_first_audio_seconds",
    "TTS request received to first audio byte sent",
    buckets=_LATENCY_BUCKETS,
)
STT_LATENCY = Histogram(
    "voxloop_stt_seconds", "Time to transcribe one utterance or clip", buckets=_LATENCY_BUCKETS
)
SESSIONS = Gauge("voxloop_sessions", "Open WebSocket sessions", ["endpoint"])
ERRORS = Counter(
    "voxloop_client_errors_total", "Requests refused for bad input or auth", ["endpoint", "kind"]
)
TURN_LATENCY = Histogram(
    "voxloop_turn_latency_seconds",
    "Per-turn latency from the end of the user's speech, by stage",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
INTERRUPTIONS = Counter("voxloop_interruptions_total", "Replies cut short by the user speaking")


def endpoint_of(scope: Any) -> str:
    """The route template of a request (``/v1/sessions/{session_id}``), never its raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"
