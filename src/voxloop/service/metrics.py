"""Prometheus metrics, exposed at ``GET /metrics``."""

from __future__ import annotations

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
