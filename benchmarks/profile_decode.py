"""Where one greedy token's time goes, float against int8: `torch.profiler` over one stream of `generate`.

    .venv/bin/python -m benchmarks.profile_decode [--tokens 64] [--rows 14]

Prints, per model, the wall time per token and the ops that took the most CPU time. The wall time minus the ops'
total is Python (HF's eager forward and `generate`), which the profiler does not attribute to any op.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from core import paths
from core.loading import load_chat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rows", type=int, default=14, help="ops listed per model")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # the quantized-tensor API's deprecation notice
    for name, folder in (("int8", paths.CHAT_INT8_MODEL), ("float", paths.CHAT_MODEL)):
        model, tok = load_chat(folder, device="cpu")
        enc: Any = tok.apply_chat_template(
            [{"role": "user", "content": "Explain what a Python decorator is."}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        kw = {"do_sample": False, "pad_token_id": tok.pad_token_id}
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, **kw)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                model.generate(**enc, max_new_tokens=a.tokens, min_new_tokens=a.tokens, **kw)
                wall = time.perf_counter() - start
        ops = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        print(
            f"== {name}: {a.tokens / wall:.1f} tokens/s, {wall / a.tokens * 1000:.1f} ms a token "
            f"({ops / a.tokens * 1000:.1f} ms in ops, the rest Python), {torch.get_num_threads()} threads"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
