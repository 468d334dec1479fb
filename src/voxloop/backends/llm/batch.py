"""Many conversations on one llama.cpp context: a KV sequence per conversation, decoded together.

Each step is one ``llama_decode`` that carries the next token of every reply being written (and
the prompt of any reply about to start), so N replies cost far less than N times one: on this
project's 2-core machine one thread decodes ~14 tokens/s for one sequence and ~26 in total for
four (bench/bench_llm_batch.py). Steps run as jobs on the LLM lane, each due when its most urgent
reply's audio is, so the lane's lag still tells admission control how far behind it is.

A step carries the replies whose audio is due within ``AHEAD_S`` (a user waiting for a first word
is due now; a reply with seconds of audio buffered can sit a step out, which keeps the step short
for the one that is due), the earliest due first, at most ``MAX_DECODING``; when none is due,
every reply advances.

Each conversation keeps its evaluated prompt in its sequence between turns ("slots"): the next
turn reuses the longest prefix any sequence holds, copying it (a shared system prompt, free in a
unified KV cache) rather than evaluating it again. The least recently used idle sequence makes
room when a new conversation needs one or the cache is full.
"""

from __future__ import annotations

import codecs
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
from llama_cpp import Llama
from prometheus_client import Counter

from voxloop.backends import workers
from voxloop.backends.llm.base import LlmError, Usage, finish_reason_of
from voxloop.backends.scheduler import Deadline, JobKind, Lane

log = logging.getLogger(__name__)

AHEAD_S = 3.0  # a reply with more audio ahead than this yields its step to replies that are due
MAX_DECODING = 4  # replies a step advances: ~26 tokens/s in all at 4 on one thread, no more at 6,
# where each reply's step is 3.4x a lone one's: beyond 4, the earliest due go first
PREFILL_PER_STEP = 256  # prompt tokens per step: a long history cannot stall the others
RESUME_TAIL = 32  # an idle sequence is taken over only if the new prompt loses this little of it

PROMPT_TOKENS = Counter(
    "voxloop_llm_prompt_tokens",
    "Prompt tokens of the embedded LLM's replies: reused from a KV sequence, or evaluated",
    ["how"],
)

TOO_BIG = "the conversation does not fit in the model's KV cache (VOXLOOP_LLM_CACHE_TOKENS)"

Deliver = Callable[[object], None]  # a text piece, then Usage; or an exception


@dataclass(eq=False)
class Slot:
    """One KV sequence and the tokens evaluated in it."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    used_at: float = 0.0
    writer: Writing | None = None


@dataclass(eq=False)
class Writing:
    """One reply being generated. ``prompt`` is filled on the worker (rendering and tokenising a
    long history is model work too)."""

    render: Callable[[], list[int]]
    max_tokens: int
    temperature: float
    due: Deadline | None
    deliver: Deliver
    prompt: list[int] = field(default_factory=list)
    slot: Slot | None = None
    next_token: int | None = None  # sampled, not yet evaluated
    produced: int = 0
    stopped: bool = False  # set from the event loop: the caller went away
    sampler: Any = None
    pieces: codecs.IncrementalDecoder = field(  # token bytes to text, across split characters
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def due_at(self, now: float) -> float:
        return self.due() if self.due is not None else now

    @property
    def prefilling(self) -> bool:
        return self.slot is not None and len(self.slot.tokens) < len(self.prompt)


class BatchedLlama:
    def __init__(
        self, model: Llama, slots: int, cells: int, context: int, threads: int, batch_threads: int, lane: Lane
    ) -> None:
        self.model, self.context, self.lane = model, context, lane
        self.threads, self.batch_threads = threads, batch_threads
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = cells
        params.n_batch = params.n_ubatch = PREFILL_PER_STEP + slots  # one ubatch: a step is atomic
        params.n_seq_max = slots
        params.kv_unified = True  # sequences share one pool of cells (a copied prefix costs none)
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # ~20 % slower prompts here
        params.n_threads, params.n_threads_batch = threads, batch_threads
        self._ctx = llama_cpp.llama_init_from_model(model._model.model, params)
        if not self._ctx:
            raise LlmError("llama.cpp could not create a context for batched decoding")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        # llama.cpp caps the batch at the cache's size; a step never carries more (it would abort)
        n_batch = llama_cpp.llama_n_batch(self._ctx)
        self._prefill_per_step = n_batch - slots
        if self._prefill_per_step < 1:
            raise LlmError(f"a KV cache of {cells} cells is too small for {slots} sequences")
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._vocab = model._model.vocab
        self._slots = [Slot(seq) for seq in range(slots)]
        self._waiting: list[Writing] = []  # rendered, no sequence free yet
        self._active: list[Writing] = []
        self._incoming: list[Writing] = []
        self._lock = threading.Lock()
        self._scheduled = False

    # --- from any thread ---------------------------------------------------------------------------

    def start(self, writing: Writing) -> None:
        with self._lock:
            self._incoming.append(writing)
            self._schedule()

    def stop(self, writing: Writing) -> None:
        """The caller is gone: the next step drops the reply and frees its sequence."""
        writing.stopped = True
        with self._lock:
            self._schedule()

    def generate(self, writing: Writing) -> None:
        """Runs ``writing`` to its end, blocking (warmup)."""
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        deliver, writing.deliver = writing.deliver, items.put
        self.start(writing)
        while not isinstance(item := items.get(), Usage):
            if isinstance(item, BaseException):
                raise item
            deliver(item)
        deliver(item)

    def _schedule(self) -> None:
        """Queues the next step on the lane unless one is queued (holding the lock)."""
        if self._scheduled:
            return
        writings = self._incoming + self._waiting + self._active
        if not writings:
            return
        self._scheduled = True
        now = time.monotonic()
        prefill = any(w.slot is None or w.prefilling for w in writings)
        kind = JobKind.LLM_PREFILL if prefill else JobKind.LLM_DECODE
        self.lane.submit(kind, self._run_step, min(w.due_at(now) for w in writings))

    # --- on the lane's worker ----------------------------------------------------------------------

    def _run_step(self) -> None:
        try:
            self._step()
        except Exception as exc:  # a decode failure ends the replies in this step, not the lane
            log.exception("batched decode step failed")
            for writing in list(self._active):
                self._finish(writing, LlmError(f"llama.cpp generation failed: {exc}"))
        finally:
            with self._lock:
                self._scheduled = False
                self._schedule()

    def _step(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for writing in incoming:
            self._admit(writing)
        for writing in [w for w in self._active + self._waiting if w.stopped]:
            self._finish(writing, None)
        now = time.monotonic()
        self._waiting.sort(key=lambda w: w.due_at(now))
        while self._waiting and self._place(self._waiting[0]):
            self._active.append(self._waiting.pop(0))
        members = self._members(now)
        if members:
            self._decode(members)

    def _admit(self, writing: Writing) -> None:
        try:
            writing.prompt = writing.render()
        except LlmError as exc:
            writing.deliver(exc)
            return
        except Exception as exc:  # a template that cannot render these messages
            writing.deliver(LlmError(f"llama.cpp could not render the prompt: {exc}"))
            return
        if len(writing.prompt) >= self.context:
            writing.deliver(LlmError(f"the conversation ({len(writing.prompt)} tokens) exceeds the context"))
            return
        writing.sampler = _sampler(writing.temperature)
        self._waiting.append(writing)

    def _place(self, writing: Writing) -> bool:
        """Gives ``writing`` a free sequence holding as much of its prompt as any sequence does."""
        idle = [slot for slot in self._slots if slot.writer is None]
        if not idle:
            return False
        prompt = writing.prompt
        best = max(self._slots, key=lambda s: (_shared(s.tokens, prompt), s.writer is None))
        shared = _shared(best.tokens, prompt)
        resumes = best.writer is None and len(best.tokens) - shared <= RESUME_TAIL
        target = best if resumes else min(idle, key=lambda s: s.used_at)
        keep = min(len(prompt) - 1, shared)  # the last token is evaluated again, for its logits
        if target is not best and shared > _shared(target.tokens, prompt):
            llama_cpp.llama_memory_seq_rm(self._memory, target.seq, 0, -1)
            llama_cpp.llama_memory_seq_cp(self._memory, best.seq, target.seq, 0, keep)
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, target.seq, keep, -1)
        target.tokens = prompt[:keep]
        PROMPT_TOKENS.labels("reused").inc(keep)
        PROMPT_TOKENS.labels("evaluated").inc(len(prompt) - keep)
        target.writer, writing.slot = writing, target
        return True

    def _members(self, now: float) -> list[Writing]:
        """The replies this step advances: every prompt being read, and the replies due soon
        (all of them when none is), at most MAX_DECODING, the earliest due first."""
        prefilling = [w for w in self._active if w.prefilling]
        decoding = sorted((w for w in self._active if w.next_token is not None), key=lambda w: w.due_at(now))
        due = [w for w in decoding if w.due_at(now) <= now + AHEAD_S]
        return prefilling + (due if due or prefilling else decoding)[:MAX_DECODING]

    def _decode(self, members: list[Writing]) -> None:
        batch, outputs, budget = self._batch, [], self._prefill_per_step
        batch.n_tokens = 0
        before = [len(w.slot.tokens) for w in members]  # type: ignore[union-attr]
        for writing in members:
            slot = writing.slot
            assert slot is not None
            if writing.next_token is not None:
                outputs.append((writing, self._add(slot, writing.next_token, True)))
                continue
            start, index = len(slot.tokens), -1
            end = min(len(writing.prompt), start + budget)
            for position in range(start, end):  # logits for the prompt's last token only
                index = self._add(slot, writing.prompt[position], position == len(writing.prompt) - 1)
            if end == len(writing.prompt):
                outputs.append((writing, index))
            budget -= end - start
        free = all(lane.busy() == 0 and lane.waiting() == 0 for lane in (workers.SPEECH, workers.VOICE))
        threads = self.batch_threads if free and os.getloadavg()[0] < (os.cpu_count() or 1) else self.threads
        llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
        while (status := llama_cpp.llama_decode(self._ctx, batch)) == 1 and self._evict():
            pass  # no room in the cache: the least recently used idle conversation made some
        if status == 1:  # even so: the cache cannot hold them all; one gives way, the rest retry
            for writing, evaluated in zip(members, before, strict=True):
                del writing.slot.tokens[evaluated:]
            reading = [writing for writing in members if writing.next_token is None]
            victim = reading[-1] if reading else max(members, key=lambda w: len(w.slot.tokens))
            self._clear(victim.slot)
            self._finish(victim, LlmError(TOO_BIG))
            return
        if status != 0:
            for writing in members:  # what the batch added to them is not evaluated
                self._clear(writing.slot)
            raise LlmError(f"llama_decode returned {status}")
        for writing, index in outputs:
            self._sample(writing, index)

    def _add(self, slot: Slot, token: int, logits: bool) -> int:
        batch, index = self._batch, self._batch.n_tokens
        batch.token[index] = token
        batch.pos[index] = len(slot.tokens)
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = slot.seq
        batch.logits[index] = logits
        batch.n_tokens += 1
        slot.tokens.append(token)
        return index

    def _evict(self) -> bool:
        idle = [slot for slot in self._slots if slot.writer is None and slot.tokens]
        if not idle:
            return False
        self._clear(min(idle, key=lambda s: s.used_at))
        return True

    def _clear(self, slot: Slot | None) -> None:
        if slot is not None:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, 0, -1)
            slot.tokens = []

    def _sample(self, writing: Writing, index: int) -> None:
        slot = writing.slot
        assert slot is not None
        token = llama_cpp.llama_sampler_sample(writing.sampler, self._ctx, index)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(writing, "stop")
            return
        writing.produced += 1
        if piece := writing.pieces.decode(self.model.detokenize([token])):
            writing.deliver(piece)
        writing.next_token = token
        if writing.produced >= writing.max_tokens or len(slot.tokens) >= self.context - 1:
            self._finish(writing, "length")

    def _finish(self, writing: Writing, end: str | LlmError | None) -> None:
        """Ends ``writing``: "stop"/"length" tell the caller why, an error fails it, None (stopped)
        tells nothing. Its sequence keeps what it evaluated, for the conversation's next turn."""
        if isinstance(end, str):
            writing.deliver(Usage(finish_reason_of(end), len(writing.prompt), writing.produced))
        elif end is not None:
            writing.deliver(end)
        for pending in (self._active, self._waiting):
            if writing in pending:
                pending.remove(writing)
        if writing.slot is not None:
            writing.slot.writer, writing.slot.used_at = None, time.monotonic()
        if writing.sampler is not None:
            llama_cpp.llama_sampler_free(writing.sampler)
            writing.sampler = None
        writing.next_token = None


def _sampler(temperature: float) -> Any:
    """The sampling the embedded model has always used: top-k 40, top-p 0.95, min-p 0.05."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    for sampler in (
        llama_cpp.llama_sampler_init_top_k(40),
        llama_cpp.llama_sampler_init_top_p(0.95, 1),
        llama_cpp.llama_sampler_init_min_p(0.05, 1),
        llama_cpp.llama_sampler_init_temp(temperature),
        llama_cpp.llama_sampler_init_dist(random.getrandbits(32)),
    ):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
