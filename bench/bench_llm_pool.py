"""The LLM pool on two real llama.cpp servers (the 0.5B model, one thread each):
tokens/s of one server alone, of the pool with two replies at once, and what a failover costs:
the pause the user's stream sees when its server is killed mid-reply (the replay re-decodes the
text already said before new text comes).

    python bench/bench_llm_pool.py [--server llama-server|llama-cpp-python] [--replies 4] [--failovers 3]

llama.cpp's llama-server (2 slots each) continues a broken reply from the text already said;
llama-cpp-python's server has no prefill, so there every failover is a seeded replay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_llm_pool import LlamaServer, start_llama_cpp_server, start_llama_server, wait_ready
from voxloop.backends.llm.base import ChatMessage, TextDelta
from voxloop.backends.llm.pool import Diverged, LlmPool
from voxloop.config import Settings

ASK = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "Tell me about the sea in five sentences."),
]
TOKENS = 120


def pool_of(servers: list[LlamaServer]) -> LlmPool:
    return LlmPool(Settings(llm_timeout_s=60), [server.url for server in servers])


async def reply(pool: LlmPool, seed: int) -> tuple[int, float, float]:
    """Pieces (about one token each), time to the first and the whole reply's seconds."""
    started, first, pieces = time.perf_counter(), 0.0, 0
    async for event in pool.stream(ASK, max_tokens=TOKENS, temperature=0.6, seed=seed):
        if isinstance(event, TextDelta):
            first = first or time.perf_counter() - started
            pieces += 1
    return pieces, first, time.perf_counter() - started


START = {"llama-server": start_llama_cpp_server, "llama-cpp-python": start_llama_server}


async def throughput(servers: list[LlamaServer], parallel: int, replies: int) -> dict[str, float]:
    pool = pool_of(servers)
    rates, firsts = [], []
    for round_ in range(replies):
        started = time.perf_counter()
        done = await asyncio.gather(*(reply(pool, round_ * 10 + i) for i in range(parallel)))
        rates.append(sum(pieces for pieces, _, _ in done) / (time.perf_counter() - started))
        firsts += [first for _, first, _ in done]
    await pool.aclose()
    return {"tokens_per_s": statistics.median(rates), "first_token_s": statistics.median(firsts)}


async def failover(servers: list[LlamaServer], folder: Path, temperature: float, kind: str) -> float | None:
    """Seconds between the last piece from the killed server and the next piece from the other,
    or None when the replay differed from the text already said (the reply ends with an error)."""
    pool = pool_of(servers)
    await pool.check()  # which servers continue a reply (prefill)
    last = pause = 0.0
    pieces, killed = 0, 0
    try:
        async for event in pool.stream(ASK, max_tokens=TOKENS, temperature=temperature):
            if not isinstance(event, TextDelta):
                continue
            now, pieces = time.perf_counter(), pieces + 1
            if pieces == 40:
                killed = next(i for i, e in enumerate(pool.endpoints) if e.in_flight)
                servers[killed].process.send_signal(signal.SIGKILL)
                servers[killed].process.wait()
            elif pieces == 41:
                pause = now - last
            last = now
    except Diverged:
        return None
    finally:
        await pool.aclose()
        if servers[killed].process.poll() is not None:  # the reply reached the kill
            servers[killed] = START[kind](folder / f"restarted-{time.monotonic_ns()}.log")
            wait_ready(servers[killed])
    return pause


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=sorted(START), default="llama-server")
    parser.add_argument("--replies", type=int, default=4)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        servers = [START[args.server](Path(folder) / f"llama-{i}.log") for i in range(2)]
        try:
            for server in servers:
                wait_ready(server)
            await throughput(servers, 1, 1)  # warm both servers' caches
            alone = await throughput(servers[:1], 1, args.replies)
            pooled = await throughput(servers, 2, args.replies)
            greedy = [await failover(servers, Path(folder), 0.0, args.server) for _ in range(args.failovers)]
            sampled = [await failover(servers, Path(folder), 0.6, args.server) for _ in range(args.failovers)]
        finally:
            for server in servers:
                server.process.kill()
    load = os.getloadavg()[0]
    print(f"{args.server}:")
    print(f"one server, one reply at a time: {alone['tokens_per_s']:.1f} tokens/s", end=", ")
    print(f"first token {alone['first_token_s']:.2f} s")
    print(f"pool of two, two replies at once: {pooled['tokens_per_s']:.1f} tokens/s in total", end=", ")
    print(f"first token {pooled['first_token_s']:.2f} s")
    pauses = [pause for pause in greedy + sampled if pause is not None]
    if pauses:
        median, worst = statistics.median(pauses), max(pauses)
        print(f"failover after 40 tokens: the stream paused {median:.2f} s (median), {worst:.2f} s at most")
    for name, runs in (("greedy", greedy), ("temperature 0.6", sampled)):
        print(f"continuations that differed, {name}: {sum(p is None for p in runs)} of {len(runs)}")
    print(f"(medians; load average {load:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    asyncio.run(main())
