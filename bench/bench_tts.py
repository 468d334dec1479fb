"""TTS time to first audio byte over the Lokutor WebSocket, and server memory after start.

The voices take turns request by request, so a busy machine slows each of them alike; the
M1/F1 ratio is the figure to compare between runs. ``--baseline OTHER/src`` starts a second
server from another checkout and measures it in the same turns: a before/after in one run.

Run: .venv/bin/python bench/bench_tts.py [--runs 30] [--baseline /path/to/other/src]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests.server import start_server

SENTENCES = [
    "Hello, how can I help you today?",
    "Sure, I can do that.",
    "The meeting starts at ten.",
    "Let me check the weather for you.",
    "That sounds like a great plan.",
]


def first_byte(ws, request: dict) -> float:
    started = time.perf_counter()
    ws.send(json.dumps(request))
    ttfb = None
    while (message := ws.recv(timeout=60)) != "EOS":
        if isinstance(message, bytes) and ttfb is None:
            ttfb = time.perf_counter() - started
        elif isinstance(message, str) and message.startswith("ERR"):
            raise RuntimeError(message)
    assert ttfb is not None
    return ttfb


VOICES = (("F1", "en"), ("M1", "en"), ("F1", "es"))


def persistent(servers: dict, runs: int) -> None:
    """First byte per server and voice on one connection each, all taking turns."""
    with contextlib.ExitStack() as stack:
        sockets = {}
        for name, server in servers.items():
            for voice, lang in VOICES:
                ws = stack.enter_context(connect(f"{server.ws}/ws/tts?api_key={server.api_key}"))
                first_byte(ws, {"text": "Warm up.", "voice": voice, "lang": lang})
                sockets[name, voice, lang] = ws
        times: dict[tuple, list[float]] = {key: [] for key in sockets}
        for i in range(runs):
            for (name, voice, lang), ws in sockets.items():
                request = {"text": SENTENCES[i % len(SENTENCES)], "voice": voice, "lang": lang}
                times[name, voice, lang].append(first_byte(ws, request))
    for (name, voice, lang), values in times.items():
        print(summary(f"{name}TTS first byte, persistent connection, {voice}/{lang}", values))
    for name in servers:
        f1, m1 = (np.percentile(times[name, voice, "en"], [50, 95]) for voice in ("F1", "M1"))
        print(f"{name}M1/F1 first byte: p50 ratio {m1[0] / f1[0]:.2f}, p95 ratio {m1[1] / f1[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--baseline", type=Path, help="another checkout's src/, measured in the same turns")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        servers = {"": start_server(Path(logs))}
        try:
            if args.baseline:
                env = {"PYTHONPATH": str(args.baseline.resolve())}
                servers["baseline "] = start_server(Path(logs), env=env)
            server = servers[""]
            print(f"server RSS after start (all models loaded): {server.rss_mb():.0f} MB")
            url = f"{server.ws}/ws/tts?api_key={server.api_key}"
            persistent(servers, args.runs)
            fresh = []
            for i in range(args.runs // 2):
                started = time.perf_counter()
                with connect(url) as ws:
                    handshake = time.perf_counter() - started
                    fresh.append(handshake + first_byte(ws, {"text": SENTENCES[i % len(SENTENCES)]}))
            print(summary("TTS first byte incl. WebSocket handshake, new connection each time, M1/en", fresh))
            print(f"server RSS after benchmark: {server.rss_mb():.0f} MB")
        finally:
            for running in servers.values():
                running.stop()


if __name__ == "__main__":
    main()
