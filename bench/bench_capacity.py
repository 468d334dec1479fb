"""Capacity: how many concurrent spoken conversations one server holds at voice-to-voice p95 <= 1.5 s
with no error.

The soak client (bench/soak.py: real-time microphone, spoken questions, 0.5-2 s of thinking
between turns) runs 1, 2, 4, 6, 8, 12 sessions in turn against one server with admission off
(every session admitted), each for ``--minutes``; per point: p50/p95 voice-to-voice, errors,
server CPU (cores) and RSS. The capacity is the largest point that meets the bound (and every
point below it does too): the figure to give VOXLOOP_MAX_CONVERSATIONS. Writes
<out>.json and the curve as <out>.png.

Run:  .venv/bin/python bench/bench_capacity.py --minutes 1 --out docs/capacity
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx

from bench.soak import cores_used, question_audio, soak, thread_cpu
from tests.server import start_server

P95_BOUND_S = 1.5
POINTS = [1, 2, 4, 6, 8, 12]


def measure(sessions: int, minutes: float, audio: list[np.ndarray]) -> dict:
    # A fresh server per point: one point's backlog never leaks into the next.
    with tempfile.TemporaryDirectory() as logs:
        env = {"VOXLOOP_MAX_CONVERSATIONS": "0", "VOXLOOP_ADMISSION_MAX_LAG_S": "0"}
        server = start_server(Path(logs), env=env)
        try:
            before, cpu_before, started = scrape(server), thread_cpu(server), time.monotonic()
            results = soak(server, audio, sessions, minutes)
            wall = time.monotonic() - started
            after, cpu_after = scrape(server), thread_cpu(server)
            log = server.log()
        finally:
            server.stop()
    latencies = [lat for _, lat in results.turns]
    p50, p95 = np.percentile(latencies, [50, 95]).tolist() if latencies else (None, None)
    point = {
        "sessions": sessions,
        "turns": len(latencies),
        "errors": len(results.errors),
        "error_samples": [e for _, e in results.errors[:3]],
        "p50_s": p50,
        "p95_s": p95,
        "server_cores": cores_used(results),
        "rss_mb_max": max((mb for _, mb in results.memory), default=None),
    }
    point["ok"] = bool(latencies) and not results.errors and p95 is not None and p95 <= P95_BOUND_S
    point["profile"] = profile(log, before, after, cpu_before, cpu_after, wall)
    return point


def scrape(server) -> dict[str, float]:
    """The server's per-kind and per-lane counters (queue wait, run time, busy time) by series name."""
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    wanted = ("queue_wait_seconds", "job_run_seconds")
    series = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        sums = any(f"{w}_sum{{" in name or f"{w}_count{{" in name for w in wanted)
        if sums or "lane_busy_seconds_total{" in name:
            series[name] = float(value)
    return series


def profile(log: str, before: dict, after: dict, cpu_before: dict, cpu_after: dict, wall: float) -> dict:
    """Where the point's turns spent their time: median ms per stage from the server's per-turn log
    (from the end of the user's speech), mean queue wait and run time per job kind, each lane's busy
    fraction (worker-seconds / wall) and CPU (cores) per thread name."""
    stages: dict[str, list[float]] = {}
    for match in re.finditer(r"turn \d+ (?:latency|trace) (\{.*\})", log):
        for stage, ms in json.loads(match.group(1)).items():
            stages.setdefault(stage, []).append(ms)
    delta = {name: after[name] - before.get(name, 0.0) for name in after}

    def per_kind(metric: str) -> dict[str, float]:
        found = {}
        for name, value in delta.items():
            if name.startswith(f"voxloop_{metric}_sum{{"):
                kind = name.split('"')[1]
                count = delta.get(name.replace("_sum{", "_count{"), 0.0)
                if count:
                    found[kind] = round(value / count * 1000, 1)
        return found

    runs = {}  # worker-seconds per kind over the point
    for name, value in delta.items():
        if name.startswith("voxloop_job_run_seconds_sum{"):
            runs[name.split('"')[1]] = round(value, 2)
    return {
        "stage_median_ms": {stage: statistics.median(v) for stage, v in sorted(stages.items())},
        "queue_wait_mean_ms": per_kind("queue_wait_seconds"),
        "run_mean_ms": per_kind("job_run_seconds"),
        "run_seconds_total": runs,
        "lane_busy_fraction": {
            name.split('"')[1]: round(value / wall, 3)
            for name, value in delta.items()
            if name.startswith("voxloop_lane_busy_seconds_total{")
        },
        "thread_cores": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / wall, 3)
            for name in sorted(cpu_after)
            if cpu_after[name] - cpu_before.get(name, 0.0) > 0.01 * wall
        },
    }


def plot(points: list[dict], capacity: int, path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [p["sessions"] for p in points]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    top.plot(n, [p["p50_s"] for p in points], "o-", label="p50")
    top.plot(n, [p["p95_s"] for p in points], "o-", label="p95")
    top.axhline(P95_BOUND_S, color="red", linestyle="--", label=f"p95 bound {P95_BOUND_S} s")
    for p in points:
        if p["errors"]:
            top.annotate(f"{p['errors']} err", (p["sessions"], p["p95_s"] or 0), color="red")
    top.set_ylabel("voice-to-voice (s)")
    top.set_yscale("log")
    top.legend(loc="upper left")
    top.set_title(f"voxloop capacity: {capacity} conversations (2 cores, Qwen 0.5B, {minutes:g} min a point)")
    middle.plot(n, [p["server_cores"] for p in points], "o-")
    middle.set_ylabel("server CPU (cores)")
    bottom.plot(n, [p["rss_mb_max"] for p in points], "o-")
    bottom.set_ylabel("server RSS max (MB)")
    bottom.set_xlabel("concurrent conversations")
    bottom.set_xticks(n)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=1.0, help="per point")
    parser.add_argument("--points", type=int, nargs="*", default=POINTS)
    parser.add_argument("--out", default="bench/results/capacity", help="writes <out>.json and <out>.png")
    args = parser.parse_args()
    audio = question_audio()
    points, started = [], time.monotonic()
    for sessions in args.points:
        point = measure(sessions, args.minutes, audio)
        points.append(point)
        p50, p95 = point["p50_s"], point["p95_s"]
        print(
            f"{sessions:3d} sessions: p50 {p50 if p50 is None else round(p50, 2)} s, "
            f"p95 {p95 if p95 is None else round(p95, 2)} s, {point['turns']} turns, "
            f"{point['errors']} errors, {point['server_cores']:.2f} cores, "
            f"RSS {point['rss_mb_max']:.0f} MB {'ok' if point['ok'] else 'over'}",
            flush=True,
        )
        for key, value in point["profile"].items():
            print(f"    {key}: {json.dumps(value)}", flush=True)
    capacity = 0
    for point in points:  # the curve up to the first point that misses the bound
        if not point["ok"]:
            break
        capacity = point["sessions"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "capacity": capacity,
        "p95_bound_s": P95_BOUND_S,
        "minutes_per_point": args.minutes,
        "wall_minutes": (time.monotonic() - started) / 60,
        "points": points,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(points, capacity, out.with_suffix(".png"), args.minutes)
    print(f"capacity: {capacity} concurrent conversations at voice-to-voice p95 <= {P95_BOUND_S} s, no error")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
