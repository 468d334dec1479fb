"""TTS time to first audio byte over the Lokutor WebSocket, and server memory after start.

Run: .venv/bin/python bench/bench_tts.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(Path(logs))
        try:
            print(f"server RSS after start (all models loaded): {server.rss_mb():.0f} MB")
            url = f"{server.ws}/ws/tts?api_key={server.api_key}"
            for voice, lang in (("F1", "en"), ("M1", "en"), ("F1", "es")):
                with connect(url) as ws:
                    first_byte(ws, {"text": "Warm up.", "voice": voice, "lang": lang})
                    times = [
                        first_byte(ws, {"text": SENTENCES[i % len(SENTENCES)], "voice": voice, "lang": lang})
                        for i in range(args.runs)
                    ]
                print(summary(f"TTS first byte, persistent connection, {voice}/{lang}", times))
            fresh = []
            for i in range(args.runs // 2):
                started = time.perf_counter()
                with connect(url) as ws:
                    handshake = time.perf_counter() - started
                    fresh.append(handshake + first_byte(ws, {"text": SENTENCES[i % len(SENTENCES)]}))
            print(summary("TTS first byte incl. WebSocket handshake, new connection each time, F1/en", fresh))
            print(f"server RSS after benchmark: {server.rss_mb():.0f} MB")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
