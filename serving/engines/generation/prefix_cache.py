"""Prefix caching: the KV cache of prompt beginnings that requests share (a system prompt, tool definitions, RAG
instructions), kept after one prefill and reused by the next prefills that start with it.

vLLM hashes every block of every prompt into its paged cache. Ours is the same idea at the scale of one CPU and a
contiguous cache: which prefixes are worth keeping is learnt from recent prompts. When a prompt shares at least
`min_tokens` leading tokens with one of the last `history` prompts, that shared run, rounded down to whole `block`s
(a prompt differing from another inside its last block still matches up to the block before), is kept after the
prompt's prefill. Kept prefixes are evicted least recently used beyond `max_tokens` tokens in all (KV memory:
layers × 2 × kv_heads × head_dim × 4 bytes per token, 46 KB for SmolLM2-135M in fp32).

A prefill whose prompts all start with a kept prefix begins from its keys and values and runs only the rest. The
rows are laid out [prefix | left padding | rest]: positions come from the mask, so padding in the middle shifts
nothing, and the answer is the whole prefill's up to float rounding.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer: keys and values, each (1, kv_heads, length, head_dim)."""


@dataclass(frozen=True)
class Prefix:
    tokens: tuple[int, ...]
    kv: KV


@dataclass
class PrefixStats:
    hits: int = 0
    """Prefills that started from a kept prefix."""
    tokens_reused: int = 0
    """Prompt tokens not run because a kept prefix held them (summed over rows)."""
    kept: int = 0
    """Prefixes kept now."""


class PrefixCache:
    """Kept prefixes (LRU), and the recent prompts that decide which prefixes to keep. Scheduler thread only."""

    def __init__(self, max_tokens: int, *, min_tokens: int = 32, block: int = 16, history: int = 32) -> None:
        self.max_tokens, self.min_tokens, self.block = max_tokens, min_tokens, block
        self._kept: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._recent: deque[np.ndarray] = deque(maxlen=history)
        self.stats = PrefixStats()

    def lookup(self, prompts: list[list[int]]) -> Prefix | None:
        """The longest kept prefix that every prompt starts with and is longer than (the last prompt token must run,
        for its logits); counted as a hit."""
        best: Prefix | None = None
        for key, prefix in self._kept.items():
            n = len(key)
            if (best is None or n > len(best.tokens)) and all(len(p) > n and tuple(p[:n]) == key for p in prompts):
                best = prefix
        if best is not None:
            self._kept.move_to_end(best.tokens)
            self.stats.hits += 1
            self.stats.tokens_reused += len(best.tokens) * len(prompts)
        return best

    def worth_keeping(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` to keep after its prefill (0: none): its longest shared run with a
        recent prompt, in whole blocks, when that is at least `min_tokens` and not kept already. Remembers `prompt`."""
        head = np.asarray(prompt[: self.max_tokens], dtype=np.int64)
        shared = max((_shared(head, other) for other in self._recent), default=0)
        self._recent.append(head)
        n = min(shared, len(prompt) - 1) // self.block * self.block
        if n < self.min_tokens or tuple(prompt[:n]) in self._kept:
            return 0
        return n

    def keep(self, tokens: tuple[int, ...], kv: KV) -> None:
        """Keep `tokens`' keys and values (their own copies), evicting the least recently used beyond `max_tokens`."""
        self._kept[tokens] = Prefix(tokens, [(k.clone(), v.clone()) for k, v in kv])
        while sum(len(t) for t in self._kept) > self.max_tokens:
            self._kept.popitem(last=False)
        self.stats.kept = len(self._kept)


def _shared(a: np.ndarray, b: np.ndarray) -> int:
    """The length of the common beginning of two token arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
