"""Where the served int8 model's one-stream token goes: the engine's own decode step (`llama_decode`, what the
server runs) at one row, under `torch.profiler`, against what reading its weights costs on this machine.

    .venv/bin/python -m benchmarks.profile_step [--threads 1] [--context 60] [--steps 64] [--base]

Prints the median step, the profiler's top ops, the bytes of weights one step reads (every int8 Linear's weight and
scales; the embedding row and norms are noise), the rate the int8 matrix products read them at, and this
machine's streaming read rate (a sum over a 512 MB tensor, the same threads) with the step that rate allows. The
server decodes int8 on one thread (`serving.chat_decode_threads`); `--threads 2` shows what both cores give.
A step's weights, not its arithmetic, bound one stream: at one row every weight is read once for one multiply-add.
`--base` profiles the base model put through the stage's recipe instead of the registered int8 model (a clean
clone has none before the pipeline runs): the same shapes and kernels, so the same step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.profiler import ProfilerActivity, profile

from core import paths
from core.config import load_params
from core.loading import load_chat
from core.quantize import load_quantized, quantize_with_recipe, save_quantized
from serving.engines.generation.batch import new_cache
from serving.engines.generation.llama_decode import decode_logits


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of int8 weights and their float scales over every dynamic int8 Linear."""
    total = 0
    for m in model.modules():
        if isinstance(m, DynamicInt8Linear):
            w, _ = m._weight_bias()
            total += w.numel() + 4 * w.q_per_channel_scales().numel()
    return total


def read_rate(threads: int, mb: int = 512, repeats: int = 7) -> float:
    """GB/s of a sum over an `mb` MB float tensor: what streaming through memory costs here."""
    x = torch.ones(mb * 2**20 // 4)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / statistics.median(times) / 1e9


def base_int8(folder: Path) -> Path:
    """The base chat model through quantize_chat's recipe (params.yaml), calibrated on one sentence: the weights'
    values do not change what a step costs, their shapes and kernels do."""
    q = load_params().quantize_chat
    model, tok = load_chat(paths.BASE_CHAT, device="cpu")
    text = "How do I install a package with pip? Run pip install followed by the package name."
    quantize_with_recipe(model, [tok(text, return_tensors="pt")["input_ids"]], q)
    save_quantized(model, tok, folder, {"alpha": q.alpha, "skip": list(q.skip), "source": str(paths.BASE_CHAT)})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the server's int8 decode uses 1)")
    ap.add_argument("--context", type=int, default=60, help="cached tokens before the first step")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rows", type=int, default=12, help="ops listed")
    ap.add_argument("--base", action="store_true", help="the base model quantised here, not the registered int8 one")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # the quantized-tensor API's deprecation notice
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_quantized(base_int8(Path(tmp) / "int8") if a.base else paths.CHAT_INT8_MODEL)
    ids, token = torch.randint(100, 1000, (1, a.context)), torch.randint(100, 1000, (1, 1))
    cache: Any = new_cache(model.config)
    times: list[float] = []
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True)

        def step(i: int) -> None:
            n = a.context + i
            decode_logits(model, token, torch.ones((1, n + 1), dtype=torch.long), torch.full((1, 1), n), cache)

        for i in range(a.steps):
            start = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(a.steps, a.steps + 16):
                step(i)
    ms = statistics.median(times) * 1e3
    events = prof.key_averages()
    matmul_us = sum(e.self_cpu_time_total for e in events if "linear_dynamic" in e.key) / 16
    total_us = sum(e.self_cpu_time_total for e in events) / 16
    calls = sum(e.count for e in events) / 16
    nbytes, rate = weight_bytes(model), read_rate(a.threads)
    print(f"threads {a.threads}; one row, {a.context}+ cached tokens: {ms:.1f} ms a step ({1e3 / ms:.1f} tokens/s)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows))
    print(
        f"ops in all: {total_us / 1e3:.1f} ms a step over {calls:.0f} op calls; the other {ms - total_us / 1e3:.1f} ms "
        "of the unprofiled step is Python and dispatch between them"
    )
    print(
        f"int8 matrix products: {matmul_us / 1e3:.1f} ms a step ({100 * matmul_us / total_us:.0f}% of the ops), "
        f"reading {nbytes / 1e6:.1f} MB of weights: {nbytes / matmul_us / 1e3:.1f} GB/s"
    )
    print(
        f"this machine streams {rate:.1f} GB/s ({a.threads} threads): those weights in {nbytes / rate / 1e6:.1f} ms "
        f"at best ({rate * 1e9 / nbytes:.0f} tokens/s if a step read nothing else)"
    )


if __name__ == "__main__":
    main()
