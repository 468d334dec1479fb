"""`make bench`: every benchmark in turn, each printing medians and percentiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_tts.py"],
    ["bench_stt.py"],
    ["bench_llm.py"],
    ["bench_agent.py"],
    ["bench_realtime.py"],
    ["bench_soca.py"],
    ["bench_selam.py"],
    ["bench_voice_agent.py"],
    ["bench_room.py", "--turns", "10", "--rooms", "2,4", "--compare"],
    ["abuse.py", "--out", "bench/results/abuse.json"],
    ["bench_llm_batch.py", "--runtime", "llama-cpp"],
    ["bench_capacity.py", "--minutes", "1", "--out", "bench/results/capacity"],
    # 20 sessions offered with admission on: the admitted ones' latency, the others' refusals
    ["soak.py", "--sessions", "20", "--minutes", "5", "--out", "bench/results/soak-20x5"],
]


def main() -> int:
    failed = []
    for name, *args in BENCHES:
        print(f"\n=== {name} {' '.join(args)} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *args], cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
