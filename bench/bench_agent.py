"""Voice-to-voice latency, barge-in reaction and memory per session, through /ws/agent with a
real-time client (microphone paced at 20 ms frames) against a server on the embedded models.

- voice-to-voice: last voiced sample sent -> first reply audio byte received;
- barge-in reaction: first sample of the user's interruption sent -> last reply byte received;
- memory: server RSS after start, and its growth per open session.

Run: .venv/bin/python bench/bench_agent.py [--turns 12] [--barge-ins 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests.agent_client import AgentClient
from tests.server import RunningServer, start_server
from tests.speech import espeak_16k

RATE = 16000
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky?",
    "Name a fruit that is yellow.",
    "What is two plus two?",
    "Which ocean is the largest?",
    "What do bees make?",
    "How many days are in a week?",
]
PROMPT = "You are a helpful assistant. Answer in one short sentence."


def trailing_silence_s(audio: np.ndarray) -> float:
    voiced = np.nonzero(np.abs(audio) > 0.02)[0]
    return (len(audio) - voiced[-1] - 1) / RATE if voiced.size else 0.0


def voice_to_voice(server: RunningServer, turns: int) -> None:
    client = AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}")
    latencies, stages = [], {}
    try:
        client.configure(PROMPT)
        for i in range(turns + 1):
            speech = espeak_16k(QUESTIONS[i % len(QUESTIONS)])
            last_voiced = client.say(speech) - trailing_silence_s(speech)
            client.wait_status("listening", since=last_voiced, timeout=60)
            first = client.first_audio_after(last_voiced)
            metrics = client.wait_for(lambda m: m.get("type") == "metrics", since=last_voiced)["data"]
            if i == 0 or first is None:  # the first turn warms the caches
                continue
            latencies.append(first - last_voiced)
            for stage, ms in metrics.items():
                stages.setdefault(stage, []).append(ms / 1000)
            time.sleep(0.3)
    finally:
        client.close()
    print(summary("voice-to-voice (last voiced sample -> first reply byte, client side)", latencies))
    for stage in ("stt_final", "llm_first_token", "tts_first_audio", "first_byte_sent"):
        print(summary(f"  server stage {stage} (from end of speech)", stages.get(stage, [])))


def barge_in(server: RunningServer, trials: int) -> None:
    """Each trial a fresh session: the bot tells a story, the user talks over it."""
    reactions = []
    stop = espeak_16k("Stop, please stop talking.")
    for _ in range(trials * 2):
        if len(reactions) == trials:
            break
        client = AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}")
        try:
            client.configure("You are a storyteller. Tell long, detailed stories of at least ten sentences.")
            ended = client.say(espeak_16k("Tell me a long story about a dragon and a knight."))
            client.wait_status("speaking", since=ended, timeout=60)
            time.sleep(1.5)
            if "listening" in client.statuses(since=ended):
                continue  # the reply was over before the user could interrupt it
            onset = time.monotonic() + 0.02  # the next microphone frame carries the first sample
            client.say(stop)
            interrupted = client.wait_status("interrupted", since=onset, timeout=30)
            arrived = next(r.at for r in client.log if r.message is interrupted)
            last_byte = max((r.at for r in client.log if r.audio and r.at <= arrived), default=onset)
            reactions.append(max(0.0, last_byte - onset))
        finally:
            client.close()
    print(summary("barge-in reaction (user speech onset -> last reply byte received)", reactions))


def memory_per_session(server: RunningServer, sessions: int) -> None:
    before = server.rss_mb()
    clients = [AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}") for _ in range(sessions)]
    try:
        for client in clients:
            client.configure(PROMPT)
        time.sleep(3)  # every session streams microphone audio meanwhile
        after = server.rss_mb()
    finally:
        for client in clients:
            client.close()
    print(
        f"memory: {before:.0f} MB with models, +{(after - before) / sessions:.1f} MB per open session "
        f"({sessions} sessions streaming audio)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--barge-ins", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(Path(logs))
        try:
            print(f"server RSS after start: {server.rss_mb():.0f} MB")
            voice_to_voice(server, args.turns)
            barge_in(server, args.barge_ins)
            memory_per_session(server, args.sessions)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
