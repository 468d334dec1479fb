"""Tokens/s of the embedded LLM decoding 1, 2, 4, 6 sequences at once on this machine.

Two runtimes: llama-cpp-python's low-level batch API (one llama_decode per step carrying one token
per sequence, each sequence with its own id in one KV cache) and xllamacpp's embedded llama.cpp
server (slots, continuous batching), if it is installed. Also time to first token for a follow-up
turn whose conversation prefix is still cached while the other conversations ran.

Run:  .venv/bin/python bench/bench_llm_batch.py [--threads 1] [--tokens 48] [--runtime both]
      (xllamacpp is not a dependency: pip install --no-deps xllamacpp into a scratch directory
      and put it on PYTHONPATH to compare)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.soak import QUESTIONS

MODEL = Path.home() / ".cache/voxloop/qwen2.5-coder-0.5b-instruct-q4_k_m/model.gguf"
SYSTEM = "You are a helpful assistant. Answer in one short sentence. " * 8


def llama_cpp_batched(counts: list[int], threads: int, tokens: int) -> dict[int, float]:
    import llama_cpp as lc
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama

    default_params = low.llama_model_default_params
    low.llama_model_default_params = lambda: _no_repack(default_params())  # AMX repack crashes here
    llm = Llama(model_path=str(MODEL), n_ctx=512, n_threads=threads, verbose=False)
    params = lc.llama_context_default_params()
    params.n_ctx = 4096 * 2
    params.n_batch = 512
    params.n_ubatch = 512
    params.n_seq_max = 8
    params.kv_unified = True  # the sequences share one pool of cells
    params.n_threads = threads
    params.n_threads_batch = 2
    ctx = lc.llama_init_from_model(llm._model.model, params)
    vocab = lc.llama_model_get_vocab(llm._model.model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    results: dict[int, float] = {}
    for n in counts:
        mem = lc.llama_get_memory(ctx)
        lc.llama_memory_clear(mem, True)
        chat = "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
        texts = [chat.format(SYSTEM, QUESTIONS[i % 6]) for i in range(n)]
        prompts = [llm.tokenize(text.encode(), special=True) for text in texts]
        batch = lc.llama_batch_init(4096, 0, n)
        pos = []
        for seq, prompt in enumerate(prompts):  # prefill each sequence
            batch.n_tokens = 0
            for i, tok in enumerate(prompt):
                k = batch.n_tokens
                batch.token[k] = tok
                batch.pos[k] = i
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = i == len(prompt) - 1
                batch.n_tokens += 1
            assert lc.llama_decode(ctx, batch) == 0
            pos.append(len(prompt))
        # llama.cpp runs any batch of more than one token on n_threads_batch: pin decode steps to
        # ``threads`` so one sequence and several are measured on the same cores
        lc.llama_set_n_threads(ctx, threads, threads)
        # first token of each from its prefill logits is skipped: measure steady decode
        current = [int(prompts[s][-1]) for s in range(n)]
        started = time.perf_counter()
        produced = 0
        for _ in range(tokens):
            batch.n_tokens = 0
            for seq in range(n):
                k = batch.n_tokens
                batch.token[k] = current[seq]
                batch.pos[k] = pos[seq]
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = True
                batch.n_tokens += 1
            assert lc.llama_decode(ctx, batch) == 0
            for seq in range(n):
                logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, seq), shape=(n_vocab,))
                current[seq] = int(logits.argmax())
                pos[seq] += 1
                produced += 1
        elapsed = time.perf_counter() - started
        results[n] = produced / elapsed
        lc.llama_set_n_threads(ctx, threads, 2)
        lc.llama_batch_free(batch)
        print(
            f"llama-cpp-python batch n={n}: {produced / elapsed:.1f} tok/s total, "
            f"{produced / elapsed / n:.1f} per sequence",
            flush=True,
        )
    return results


def xllamacpp_server(counts: list[int], threads: int, tokens: int) -> None:
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = str(MODEL)
    params.n_ctx = 4096 * 6
    params.n_parallel = max(counts)
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = 2
    params.warmup = True
    server = xlc.Server(params)

    def ask(messages: list[dict], out: list, i: int) -> None:
        first = [0.0]
        count = [0]
        started = time.perf_counter()

        def on_chunk(chunk: object) -> bool:
            if not first[0]:
                first[0] = time.perf_counter() - started
            count[0] += 1
            return False

        server.handle_chat_completions(
            {
                "messages": messages,
                "max_tokens": tokens,
                "temperature": 0.0,
                "ignore_eos": True,
                "stream": True,
                "cache_prompt": True,
            },
            on_chunk,
        )
        out[i] = (first[0], count[0], time.perf_counter() - started)

    for n in counts:
        convs = [
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % 6]}]
            for i in range(n)
        ]
        out: list = [None] * n
        started = time.perf_counter()
        ts = [threading.Thread(target=ask, args=(convs[i], out, i)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - started
        total = sum(o[1] for o in out)
        print(
            f"xllamacpp n={n}: {total / elapsed:.1f} tok/s total, TTFT cold "
            f"{max(o[0] for o in out):.2f} s (max)",
            flush=True,
        )
    # follow-up turn of conversation 0 after the others ran: is its prefix still cached?
    convs0 = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTIONS[0]},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]
    out = [None]
    ask(convs0, out, 0)
    print(f"xllamacpp follow-up TTFT: {out[0][0]:.3f} s", flush=True)
    print(json.dumps(server.handle_metrics() if hasattr(server, "handle_metrics") else {})[:200])


def cached_prefix_ttft(rounds: int) -> None:
    """Time to first token of a conversation's next turn after another conversation used the
    model, with each conversation's prompt kept in the prefix cache and without it."""
    import asyncio

    from voxloop.backends.llm.base import ChatMessage
    from voxloop.backends.llm.llama import LlamaLlm
    from voxloop.config import Settings

    history = []
    for question, answer in [
        ("What is the capital of France?", "Paris."),
        ("And of Italy?", "Rome."),
        ("Name a big river in Egypt.", "The Nile."),
        ("What do bees make?", "Honey."),
    ]:
        history += [ChatMessage("user", question), ChatMessage("assistant", answer)]

    def talk(n: int, question: str) -> list[ChatMessage]:
        return [ChatMessage("system", f"Conversation {n}. {SYSTEM}"), *history, ChatMessage("user", question)]

    async def first_token(llm: LlamaLlm, messages: list[ChatMessage]) -> float:
        started = time.perf_counter()
        async for _ in llm.stream(messages, max_tokens=4, temperature=0.0):
            return time.perf_counter() - started
        return time.perf_counter() - started

    async def run(cache_mb: int) -> list[float]:
        llm = LlamaLlm(Settings(llm_cache_mb=cache_mb))
        llm.warmup()
        await first_token(llm, talk(0, "Hi"))
        times = []
        for i in range(rounds):
            await first_token(llm, talk(1, f"Question {i} from the other conversation?"))
            times.append(await first_token(llm, talk(0, f"And question {i}?")))
        return times

    for cache_mb in (256, 0):
        times = asyncio.run(run(cache_mb))
        print(
            f"follow-up TTFT after another conversation, cache {cache_mb} MB: "
            f"median {np.median(times) * 1000:.0f} ms over {len(times)}",
            flush=True,
        )


def _no_repack(params):  # type: ignore[no-untyped-def]
    params.use_extra_bufts = False
    return params


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--runtime", choices=["llama-cpp", "xllamacpp", "both"], default="llama-cpp")
    parser.add_argument("--rounds", type=int, default=5, help="follow-up turns timed with the prefix cache")
    args = parser.parse_args()
    counts = [1, 2, 4, 6]
    if args.runtime in ("llama-cpp", "both"):
        llama_cpp_batched(counts, args.threads, args.tokens)
        cached_prefix_ttft(args.rounds)
    if args.runtime in ("xllamacpp", "both"):
        xllamacpp_server(counts, args.threads, args.tokens)
