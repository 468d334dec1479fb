"""Embedded LLM latency: time to first token with the system prompt cached and cold, and decode speed.

Usage: .venv/bin/python bench/bench_llm.py [--runs 10]   (VOXLOOP_LLM_MODEL picks the model)
Tokens are counted as streamed deltas: llama-cpp-python yields one per token, merging only the
rare token that ends mid UTF-8 character.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from voxloop.backends.llm.base import ChatMessage, TextDelta
from voxloop.backends.llm.llama import LlamaLlm
from voxloop.config import Settings

SYSTEM = (
    "You are Vox, a friendly voice assistant for a small bookshop called Paper Lantern. You speak with "
    "customers over the phone, so every answer is read aloud by a speech synthesiser: answer in one or "
    "two short sentences, never use lists, tables, markdown, emojis or code, and spell out numbers the "
    "way a person would say them. The shop is open from nine in the morning to seven in the evening, "
    "Monday to Saturday, and closed on Sundays. It sells new and second-hand books, mostly fiction, "
    "history and children's books, and it can order any book in print within three working days. "
    "Customers can reserve books by phone for up to a week. Delivery within the city costs three euros "
    "and is free above forty euros. If you do not know something, say so and offer to take a message "
    "for the owner, Marta. Be warm and patient, and if the caller interrupts you, stop and listen. "
    "Never invent prices, titles or opening hours that are not given here."
)
QUESTIONS = [
    "Are you open on Sunday?",
    "How much is delivery for a twenty euro order?",
    "Can you order a book that you don't have in stock?",
    "How long can I reserve a book for?",
    "Do you sell second-hand books?",
    "What time do you close on Saturday?",
    "Who is the owner of the shop?",
    "Is delivery free if I spend fifty euros?",
    "Do you have children's books?",
    "Can I reserve a book by phone?",
]


async def one_turn(llm: LlamaLlm, system: str, question: str) -> tuple[float, float, int]:
    """(seconds to first token, seconds in total, tokens)."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async for event in llm.stream(
        [ChatMessage("system", system), ChatMessage("user", question)], max_tokens=80
    ):
        if isinstance(event, TextDelta):
            tokens += 1
            first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, tokens


def memory_mb() -> tuple[float, float]:
    """(resident now, peak resident) in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


async def main(runs: int) -> None:
    settings = Settings()
    llm = LlamaLlm(settings)
    started = time.perf_counter()
    llm.warmup(SYSTEM)
    loaded = time.perf_counter() - started
    print(f"model {llm.name}, threads {settings.llm_threads} decode / {settings.llm_batch_threads} prompt")
    print(f"load + system prompt: {loaded:.2f} s")

    cached = [await one_turn(llm, SYSTEM, QUESTIONS[i % len(QUESTIONS)]) for i in range(runs)]
    # A different first line each time, so nothing of the system prompt is in the KV cache.
    cold = [await one_turn(llm, f"Call {i}. {SYSTEM}", QUESTIONS[i]) for i in range(3)]

    ttft = [first for first, _, _ in cached]
    speed = [(tokens - 1) / (total - first) for first, total, tokens in cached if tokens > 1]
    print(
        f"time to first token, system prompt cached ({runs} runs): p50 {statistics.median(ttft):.3f} s, "
        f"p95 {p95(ttft):.3f} s"
    )
    cold_p50 = statistics.median([first for first, _, _ in cold])
    print(f"time to first token, system prompt not cached (3 runs): p50 {cold_p50:.3f} s")
    print(
        f"decode: {statistics.median(speed):.1f} tokens/s (median), "
        f"{statistics.mean(tokens for _, _, tokens in cached):.0f} tokens per answer"
    )
    rss, peak = memory_mb()
    print(f"memory: {rss:.0f} MB resident, {peak:.0f} MB peak (whole process)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
