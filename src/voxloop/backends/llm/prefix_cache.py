"""Each conversation's evaluated prompt kept in RAM, so interleaved conversations do not re-read
their whole history whenever another one has used the model.

llama.cpp holds one evaluated prefix in its KV cache. When a generation takes the model over from
another conversation, the outgoing conversation's KV (a few MB for a few hundred tokens of the
0.5B model) is copied out under its tokens, and the incoming one is copied back in if the cache
holds a longer prefix of its prompt than the model does. Least recently used entries go first.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence

import llama_cpp
from llama_cpp import Llama

SEQ = 0  # the one sequence the high-level Llama uses


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._states)

    def save(self, model: Llama) -> None:
        """Copies the model's evaluated tokens out (replacing shorter entries of the same talk)."""
        tokens = tuple(int(t) for t in model.input_ids[: model.n_tokens])
        if not tokens or self.capacity <= 0:
            return
        ctx = model._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, SEQ)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, SEQ)
        for key in [key for key in self._states if tokens[: len(key)] == key]:
            self._size -= len(self._states.pop(key))  # a prefix of what is saved now
        self._states[tokens] = bytes(buffer)[:written]
        self._size += written
        while self._size > self.capacity and self._states:
            self._size -= len(self._states.popitem(last=False)[1])

    def restore(self, model: Llama, prompt: Sequence[int]) -> int:
        """Loads the entry sharing the longest prefix with ``prompt`` if it beats what the model
        holds; returns the tokens of ``prompt`` now evaluated in the model."""
        held = shared_prefix(model.input_ids[: model.n_tokens].tolist(), prompt)
        best, best_len = None, held
        for key in self._states:
            if (length := shared_prefix(key, prompt)) > best_len:
                best, best_len = key, length
        if best is None:
            return held
        self._states.move_to_end(best)
        data = self._states[best]
        model._ctx.kv_cache_seq_rm(SEQ, 0, -1)
        source = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(model._ctx.ctx, source, len(data), SEQ) != len(data):
            model.reset()
            return 0
        model.input_ids[: len(best)] = best
        model.n_tokens = len(best)
        model._requires_eval = True  # logits are not restored: generate() replays one token
        return best_len
