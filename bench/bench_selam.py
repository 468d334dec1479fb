"""Voice-to-voice latency through the SelamGPT Socket.IO protocol: a python-socketio client streams
spoken questions as base64 PCM16 in real time (30 ms chunks) against a server on the embedded
models; latency is the last voiced sample sent -> the first MP3 ``audio_chunk`` received.

Run: .venv/bin/python bench/bench_selam.py [--turns 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_agent import PROMPT, QUESTIONS, trailing_silence_s
from bench.stats import summary
from tests.selam_client import SelamClient
from tests.server import RunningServer, start_server
from tests.speech import espeak_16k


def voice_to_voice(server: RunningServer, turns: int) -> None:
    client = SelamClient(server.http, server.api_key).connect()
    latencies: list[float] = []
    try:
        client.start(voice="alloy", language="en", instructions=PROMPT)
        for i in range(turns + 1):
            speech = espeak_16k(QUESTIONS[i % len(QUESTIONS)])
            last_voiced = client.say(speech, silence_s=1.0) - trailing_silence_s(speech)
            first = client.wait_event("audio_chunk", last_voiced, timeout=60)
            client.wait_event("audio_end", last_voiced, timeout=90)
            if i > 0:  # the first turn warms the caches
                latencies.append(first.at - last_voiced)
            time.sleep(0.3)
    finally:
        client.close()
    print(summary("SelamGPT voice-to-voice (last voiced sample sent -> first MP3 chunk received)", latencies))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(Path(logs))
        try:
            voice_to_voice(server, args.turns)
            stages = [
                line.split("latency ", 1)[1] for line in server.log().splitlines() if " latency {" in line
            ]
            print("server-side stages (ms, last turns):", *stages[-3:], sep="\n  ")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
