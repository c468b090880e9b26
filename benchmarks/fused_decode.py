"""The int8 chat model's decode step with its projections fused (q/k/v and gate/up as one int8 Linear each,
`core.quantize.fuse_projections`, what serving loads) against separate, paired step by step.

    .venv/bin/python -m benchmarks.fused_decode [--steps 120] [--context 200] [--rows 1 4 16]

Both models decode the same tokens over their own caches, alternating which goes first, so a shared host's drift
falls on both; prints the median step of each and the median of the paired ratios. Measured 2026-12-02 (2 threads)
on the fine-tuned champion: 1.10x at 1 row (36.6 -> 33.2 ms), 1.08x at 4, 1.04x at 16, the same logits bit for bit
(on the base model's int8 form: 1.09-1.10x at 1 and 4 rows, 1.05-1.06x at 16).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Any

import torch
from transformers import DynamicCache

from core import paths
from core.quantize import fuse_projections, load_quantized


def paired(separate: Any, fused: Any, rows: int, context: int, steps: int) -> tuple[float, float, float]:
    """Median ms per step of each model, and the median of separate/fused over the paired steps."""
    ids, token = torch.randint(100, 1000, (rows, context)), torch.randint(100, 1000, (rows, 1))
    models = (separate, fused)
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        caches = [DynamicCache(config=m.config) for m in models]
        for m, c in zip(models, caches, strict=True):
            m(input_ids=ids, cache=c, use_cache=True)
        for i in range(steps):
            positions = torch.full((rows, 1), context + i)
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                start = time.perf_counter()
                models[k](input_ids=token, cache=caches[k], use_cache=True, position_ids=positions)
                times[k].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(*times, strict=True)]
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3, statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--context", type=int, default=200, help="cached tokens before the first step")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # the quantized-tensor API's deprecation notice
    separate, _ = load_quantized(paths.CHAT_INT8_MODEL, fuse=False)
    fused = copy.deepcopy(separate)
    fuse_projections(fused)
    ids = torch.randint(100, 1000, (1, 32))
    with torch.inference_mode():
        same = torch.equal(separate(ids).logits, fused(ids).logits)
    print(f"threads {torch.get_num_threads()}, the same logits: {same}")
    for rows in a.rows:
        s, f, r = paired(separate, fused, rows, a.context, a.steps)
        print(f"{rows:>3} rows: separate {s:6.1f} ms  fused {f:6.1f} ms  paired speed-up {r:.3f}x", flush=True)


if __name__ == "__main__":
    main()
