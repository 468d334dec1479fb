"""Typed-turn latency through /v1/voice-agent (the VoiceAgent SDK protocol) against a server on the
embedded models: transcript sent -> first text_delta, first audio_chunk (a whole spoken MP3
sentence or clause) and response_complete.

Run: .venv/bin/python bench/bench_voice_agent.py [--turns 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_agent import QUESTIONS  # the same questions as the /ws/agent benchmark
from bench.stats import summary
from tests.server import start_server
from tests.voice_agent_client import VoiceAgentClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    server = start_server(Path(tempfile.mkdtemp()))
    first_text, first_audio, complete = [], [], []
    try:
        client = VoiceAgentClient(f"{server.ws}/v1/voice-agent?api_key={server.api_key}")
        client.ask("Hello!")  # warm the caches; not measured
        client.wait_type("response_complete")
        for turn in range(args.turns):
            sent = client.ask(QUESTIONS[turn % len(QUESTIONS)])
            done = client.wait_type("response_complete", sent, timeout=180)
            first_text.append(client.wait_type("text_delta", sent).at - sent)
            first_audio.append(client.wait_type("audio_chunk", sent).at - sent)
            complete.append(done.at - sent)
        client.close()
    finally:
        server.stop()
    print("per turn, first audio_chunk (s):", [round(s, 2) for s in first_audio])
    print(summary("typed question -> first text_delta", first_text))
    print(summary("typed question -> first audio_chunk", first_audio))
    print(summary("typed question -> response_complete", complete))


if __name__ == "__main__":
    main()
