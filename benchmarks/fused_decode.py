"""The int8 chat model's decode step with its projections fused (q/k/v and gate/up as one int8 Linear each,
`core.int8_modules.fuse_projections`, what serving loads) against separate, paired step by step; with `--lean`, the
fused model's step through transformers' forward against the engine's hand-written one
(`serving.engines.generation.llama_decode`).

    .venv/bin/python -m benchmarks.fused_decode [--lean] [--steps 120] [--context 200] [--rows 1 4 16]

Both models decode the same tokens over their own caches, alternating which goes first, so a shared host's drift
falls on both; prints the median step of each and the median of the paired ratios. Measured 2026-12-02 (2 threads)
on the fine-tuned champion: 1.10x at 1 row (36.6 -> 33.2 ms), 1.08x at 4, 1.04x at 16, the same logits bit for bit
(on the base model's int8 form: 1.09-1.10x at 1 and 4 rows, 1.05-1.06x at 16), both then in transformers' stock
cache. `--lean` the same day, two runs: 1.10-1.14x at 1 row (32.1 -> 28.9 ms), 1.10-1.13x at 4, 1.06-1.08x at 16,
the same logits bit for bit. Both sides now decode into the engine's cache (`new_cache`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from core import paths
from core.int8_modules import fuse_projections
from core.quantize import load_quantized
from serving.engines.generation.batch import new_cache
from serving.engines.generation.llama_decode import decode_logits

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache], Any]
"""(token (B, 1), mask (B, L + 1), positions (B, 1), cache) -> logits; the cache grows in place."""


def transformers_step(model: Any) -> Step:
    return lambda token, mask, positions, cache: model(
        input_ids=token, attention_mask=mask, cache=cache, use_cache=True, position_ids=positions
    )


def lean_step(model: Any) -> Step:
    return lambda token, mask, positions, cache: decode_logits(model, token, mask, positions, cache)


def paired(a: tuple[Any, Step], b: tuple[Any, Step], rows: int, context: int, steps: int) -> tuple[float, float, float]:
    """Median ms per step of each (model, step), and the median of a/b over the paired steps."""
    ids, token = torch.randint(100, 1000, (rows, context)), torch.randint(100, 1000, (rows, 1))
    sides = (a, b)
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        caches = [new_cache(m.config) for m, _ in sides]
        for (m, _), c in zip(sides, caches, strict=True):
            m(input_ids=ids, cache=c, use_cache=True)
        for i in range(steps):
            positions, mask = torch.full((rows, 1), context + i), torch.ones((rows, context + i + 1), dtype=torch.long)
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                start = time.perf_counter()
                sides[k][1](token, mask, positions, caches[k])
                times[k].append(time.perf_counter() - start)
    ratios = [x / y for x, y in zip(*times, strict=True)]
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3, statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--context", type=int, default=200, help="cached tokens before the first step")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--lean", action="store_true", help="transformers' forward against llama_decode, both fused")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # the quantized-tensor API's deprecation notice
    if a.lean:
        model, _ = load_quantized(paths.CHAT_INT8_MODEL)
        print(f"threads {torch.get_num_threads()}")
        for rows in a.rows:
            s, f, r = paired((model, transformers_step(model)), (model, lean_step(model)), rows, a.context, a.steps)
            print(f"{rows:>3} rows: transformers {s:6.1f} ms  llama_decode {f:6.1f} ms  paired speed-up {r:.3f}x")
        return
    separate, _ = load_quantized(paths.CHAT_INT8_MODEL, fuse=False)
    fused = copy.deepcopy(separate)
    fuse_projections(fused)
    ids = torch.randint(100, 1000, (1, 32))
    with torch.inference_mode():
        same = torch.equal(separate(ids).logits, fused(ids).logits)
    print(f"threads {torch.get_num_threads()}, the same logits: {same}")
    for rows in a.rows:
        s, f, r = paired(
            (separate, transformers_step(separate)), (fused, transformers_step(fused)), rows, a.context, a.steps
        )
        print(f"{rows:>3} rows: separate {s:6.1f} ms  fused {f:6.1f} ms  paired speed-up {r:.3f}x", flush=True)


if __name__ == "__main__":
    main()
