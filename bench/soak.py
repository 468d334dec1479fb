"""Soak: N concurrent spoken conversations through /ws/agent for M minutes on loopback.

Each client is a real-time microphone (20 ms frames) asking espeak-spoken questions one after
another and listening to the spoken answers. Reported: errors (error events, turns with no answer,
dropped connections), voice-to-voice latency (last question sample sent -> first reply audio
received) per time window, and server memory (RSS) over time; written as a JSON summary and a PNG.

With admission on (the server's VOXLOOP_MAX_CONVERSATIONS), sessions beyond the server's capacity
are refused at once (an error, close 1013): counted as refusals, not errors.

Run:  .venv/bin/python bench/soak.py --sessions 20 --minutes 10 --out bench/soak
      (--sessions 4 --minutes 1 for a quick look; the target is 20 sessions, zero errors, memory
      flat within 10 % from the end of the first window to the end of the run)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests.agent_client import AgentClient
from tests.server import RunningServer, start_server
from tests.speech import espeak_16k

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "How many days are in a week?",
]
PROMPT = "You are a helpful assistant. Answer in one short sentence."
TURN_TIMEOUT_S = 120
REFUSAL_WAIT_S = 1.5  # a refusal comes within milliseconds of the handshake


@dataclass
class Results:
    started: float = field(default_factory=time.monotonic)
    turns: list[tuple[float, float]] = field(default_factory=list)  # (at s since start, latency s)
    errors: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, str]] = field(default_factory=list)  # sessions turned away at admission
    memory: list[tuple[float, float]] = field(default_factory=list)  # (at, RSS MB)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (at, server CPU seconds used)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started


def converse(
    server: RunningServer, audio: list[np.ndarray], until: float, results: Results, seed: int
) -> None:
    rng = random.Random(seed)
    try:
        client = AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}")
    except Exception as exc:
        with results.lock:
            results.errors.append((results.now(), f"connect: {exc}"))
        return
    seen_errors = 0
    try:
        if refusal := refused(client):
            with results.lock:
                results.refused.append((results.now(), refusal))
            return
        client.configure(PROMPT)
        time.sleep(rng.uniform(0, 3))  # stagger the sessions
        while time.monotonic() < until:
            ended = client.say(audio[rng.randrange(len(audio))])
            try:
                client.wait_transcript("assistant", since=ended, timeout=TURN_TIMEOUT_S)
                client.wait_status("listening", since=ended, timeout=TURN_TIMEOUT_S)
                first = client.first_audio_after(ended)
                with results.lock:
                    if first is None:
                        results.errors.append((results.now(), "reply without audio"))
                    else:
                        results.turns.append((results.now(), first - ended))
            except TimeoutError as exc:
                with results.lock:
                    results.errors.append((results.now(), f"no answer: {str(exc)[:200]}"))
            errors = client.events("error")
            with results.lock:
                results.errors.extend((results.now(), e.get("data", "")) for e in errors[seen_errors:])
            seen_errors = len(errors)
            if client.ws.close_code is not None:
                with results.lock:
                    results.errors.append((results.now(), f"connection closed {client.ws.close_code}"))
                return
            time.sleep(rng.uniform(0.5, 2.0))  # the user thinks
    finally:
        client.close()


def refused(client: AgentClient) -> str | None:
    """The refusal a session got at admission (error, close 1013), or None once it is served."""
    deadline = time.monotonic() + REFUSAL_WAIT_S
    while time.monotonic() < deadline:
        if client.ws.close_code is not None:
            errors = client.events("error")
            return f"{client.ws.close_code}: {errors[0].get('data', '') if errors else ''}"
        time.sleep(0.05)
    return None


def cpu_seconds(server: RunningServer) -> float:
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def thread_cpu(server: RunningServer) -> dict[str, float]:
    """CPU seconds used so far by the server's threads, summed by thread name (the lanes name
    their threads vx-speech-N, vx-llm-0, vx-turn, the STT's pools vx-stt; the main thread is the
    event loop; ``python``, what is not named)."""
    used: dict[str, float] = {}
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        try:
            main = task.name == str(server.process.pid)
            comm = "event-loop" if main else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        used[comm] = used.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def sample_memory(server: RunningServer, done: threading.Event, results: Results, every_s: float) -> None:
    while not done.is_set():  # until the last conversation has finished its turn
        with results.lock:
            results.memory.append((results.now(), server.rss_mb()))
            results.cpu.append((results.now(), cpu_seconds(server)))
        done.wait(every_s)


def windows(results: Results, window_s: float, duration_s: float) -> list[dict]:
    rows = []
    for start in np.arange(0, duration_s, window_s):
        lat = [lat for at, lat in results.turns if start <= at < start + window_s]
        rss = [mb for at, mb in results.memory if start <= at < start + window_s]
        errs = [e for at, e in results.errors if start <= at < start + window_s]
        p50, p95 = (np.percentile(lat, [50, 95]) * 1000).tolist() if lat else (None, None)
        rows.append(
            {
                "window_start_s": float(start),
                "turns": len(lat),
                "errors": len(errs),
                "p50_ms": p50,
                "p95_ms": p95,
                "rss_mb_max": max(rss) if rss else None,
            }
        )
    return rows


def plot(results: Results, rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    if results.turns:
        at, lat = zip(*results.turns, strict=True)
        top.scatter(at, np.asarray(lat) * 1000, s=6, alpha=0.35, label="turn")
    mids = [r["window_start_s"] for r in rows if r["p50_ms"] is not None]
    top.step(mids, [r["p50_ms"] for r in rows if r["p50_ms"] is not None], where="post", label="p50")
    top.step(mids, [r["p95_ms"] for r in rows if r["p95_ms"] is not None], where="post", label="p95")
    for at, _ in results.errors:
        top.axvline(at, color="red", alpha=0.4)
    top.set_ylabel("voice-to-voice latency (ms)")
    top.legend(loc="upper left")
    top.set_title(title)
    if results.memory:
        at, mb = zip(*results.memory, strict=True)
        bottom.plot(at, mb)
    bottom.set_ylabel("server RSS (MB)")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def question_audio() -> list[np.ndarray]:
    return [np.concatenate([espeak_16k(q), np.zeros(1600, np.float32)]) for q in QUESTIONS]


def soak(
    server: RunningServer, audio: list[np.ndarray], sessions: int, minutes: float, memory_every_s: float = 2
) -> Results:
    """``sessions`` conversations at once for ``minutes`` against a running server."""
    results = Results()
    until = time.monotonic() + minutes * 60
    done = threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(server, done, results, memory_every_s))
    sampler.start()
    threads = [
        threading.Thread(target=converse, args=(server, audio, until, results, seed))
        for seed in range(sessions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    return results


def cores_used(results: Results) -> float:
    """Server CPU over the run, in cores (1.0 = one core busy all the time)."""
    if len(results.cpu) < 2:
        return 0.0
    (t0, c0), (t1, c1) = results.cpu[0], results.cpu[-1]
    return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--window-s", type=float, default=60)
    parser.add_argument("--memory-every-s", type=float, default=2)
    parser.add_argument(
        "--max-conversations", type=int, help="the server's admission limit (default: its own)"
    )
    parser.add_argument("--out", default="bench/soak", help="writes <out>.json and <out>.png")
    args = parser.parse_args()
    env = {} if args.max_conversations is None else {"VOXLOOP_MAX_CONVERSATIONS": str(args.max_conversations)}
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(Path(logs), env=env)
        try:
            results = soak(server, question_audio(), args.sessions, args.minutes, args.memory_every_s)
            server_alive = server.process.poll() is None
        finally:
            server.stop()
    elapsed = results.now()
    rows = windows(results, args.window_s, elapsed)
    # Memory once settled (the second window: models loaded, every session open) against the last window;
    # medians, since RSS breathes by tens of MB with each reply.
    end = results.memory[-1][0] if results.memory else 0.0
    settled = [mb for at, mb in results.memory if args.window_s <= at < 2 * args.window_s]
    last = [mb for at, mb in results.memory if at >= end - args.window_s]
    growth = (np.median(last) - np.median(settled)) / np.median(settled) * 100 if settled and last else None
    summary_json = {
        "sessions": args.sessions,
        "minutes": args.minutes,
        "turns": len(results.turns),
        "errors": len(results.errors),
        "error_samples": [e for _, e in results.errors[:20]],
        "refused": len(results.refused),
        "refusal_samples": [e for _, e in results.refused[:3]],
        "server_cores": cores_used(results),
        "latency_ms": {
            key: float(np.percentile([lat for _, lat in results.turns], q) * 1000) if results.turns else None
            for key, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))
        },
        "rss_mb": {
            "start": results.memory[0][1] if results.memory else None,
            "max": max(mb for _, mb in results.memory) if results.memory else None,
            "end": results.memory[-1][1] if results.memory else None,
            "growth_pct": None if growth is None else float(growth),
        },
        "server_alive_at_end": server_alive,
        "windows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary_json, indent=2))
    title = f"voxloop soak: {args.sessions} sessions, {args.minutes:g} min, {len(results.errors)} errors"
    if results.refused:
        title += f", {len(results.refused)} refused at admission"
    plot(results, rows, out.with_suffix(".png"), title)
    print(summary("voice-to-voice", [lat for _, lat in results.turns]))
    for row in rows:
        print(json.dumps(row))
    print(f"turns={len(results.turns)} errors={len(results.errors)} refused={len(results.refused)}")
    print(f"rss={summary_json['rss_mb']} server cores={summary_json['server_cores']:.2f}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
