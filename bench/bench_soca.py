"""Voice-to-voice latency through the Soca voice-ws with a real-time client (20 ms frames): last
voiced sample sent -> first sentence MP3 received, and the same to the stt.final message.

Run: .venv/bin/python bench/bench_soca.py [--turns 8] [--shared | --compare]

``--shared`` runs the node on a real Redis and PostgreSQL (tests/infra.py starts them on loopback):
the per-conversation overhead of shared state. ``--compare`` runs both, one after the other, and
adds the time to open a conversation (start message sent -> ``ready``: the key check, the lease,
the session id claim and the resume lookup, all in the shared stores with ``--shared``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_agent import PROMPT, QUESTIONS, trailing_silence_s
from bench.stats import summary
from tests import infra
from tests.server import RunningServer, start_server
from tests.soca_client import SocaClient
from tests.speech import espeak_16k


def open_times(server: RunningServer, sessions: int) -> list[float]:
    """Start message sent -> ready, for ``sessions`` fresh conversations one after the other."""
    took = []
    for _ in range(sessions):
        start = {
            "type": "start",
            "token": server.api_key,
            "session_id": f"bench_{uuid.uuid4().hex}",
            "lang": "en",
        }
        started = time.perf_counter()
        client = SocaClient(f"{server.ws}/v1/voice-ws", {**start, "sr": 16000})
        took.append(time.perf_counter() - started)
        assert client.ready["type"] == "ready", client.ready
        client.close()
    return took


def voice_to_voice(server: RunningServer, turns: int, label: str = "") -> None:
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
    print(
        summary(
            f"soca voice-to-voice{label} (last voiced sample -> first sentence MP3, client side)", to_sentence
        )
    )
    print(summary(f"  last voiced sample -> stt.final{label}", to_final))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--shared", action="store_true", help="on Redis and PostgreSQL (shared state)")
    parser.add_argument("--compare", action="store_true", help="embedded, then shared state")
    parser.add_argument("--sessions", type=int, default=20, help="conversations opened (--compare)")
    args = parser.parse_args()
    for shared in [False, True] if args.compare else [args.shared]:
        with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
            env, label = {}, " [embedded]" if args.compare else ""
            if shared:
                env = {
                    "VOXLOOP_REDIS_URL": stack.enter_context(infra.redis_server()),
                    "VOXLOOP_DATABASE_URL": stack.enter_context(infra.postgres_server()),
                }
                label = " [Redis+PostgreSQL]"
            server = start_server(Path(logs), env=env)
            try:
                voice_to_voice(server, args.turns, label)
                if args.compare:
                    print(
                        summary(
                            f"  conversation open (start -> ready){label}", open_times(server, args.sessions)
                        )
                    )
            finally:
                server.stop()


if __name__ == "__main__":
    main()
