"""Voice-to-voice latency through the Soca voice-ws with a real-time client (20 ms frames): last
voiced sample sent -> first sentence MP3 received, and the same to the stt.final message.

Run: .venv/bin/python bench/bench_soca.py [--turns 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_agent import PROMPT, QUESTIONS, trailing_silence_s
from bench.stats import summary
from tests.server import RunningServer, start_server
from tests.soca_client import SocaClient
from tests.speech import espeak_16k


def voice_to_voice(server: RunningServer, turns: int) -> None:
    start = {"type": "start", "token": server.api_key, "session_id": f"bench_{uuid.uuid4().hex}"}
    client = SocaClient(f"{server.ws}/v1/voice-ws", {**start, "lang": "en", "sr": 16000, "prompt": PROMPT})
    to_sentence, to_final = [], []
    try:
        for i in range(turns + 1):
            speech = espeak_16k(QUESTIONS[i % len(QUESTIONS)])
            last_voiced = client.say(speech) - trailing_silence_s(speech) - 0.1
            client.final_answer(since=last_voiced, timeout=120)
            final = client.wait_for(lambda m: m["type"] == "stt.final", since=last_voiced)
            sentence = client.wait_for(lambda m: m.get("stepType") == "sentence", since=last_voiced)
            if i == 0:  # the first turn warms the caches
                continue
            to_final.append(client.received_at(final) - last_voiced)
            to_sentence.append(client.received_at(sentence) - last_voiced)
            time.sleep(0.3)
    finally:
        client.close()
    print(summary("soca voice-to-voice (last voiced sample -> first sentence MP3, client side)", to_sentence))
    print(summary("  last voiced sample -> stt.final", to_final))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(Path(logs))
        try:
            voice_to_voice(server, args.turns)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
