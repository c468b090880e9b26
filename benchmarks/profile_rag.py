"""Where our server's time goes under RAG load: py-spy samples the running server (every worker, every thread) while
4 clients ask for 128-token cited answers, then the samples are summed per thread and per engine step.

    .venv/bin/uv pip install --python .venv/bin/python py-spy     # once: a sampling profiler, not a dependency
    .venv/bin/python -m benchmarks.profile_rag [--set SERVING_CHAT_VARIANT=int8]

Measured 2026-11-30 (int8, 25 s at 50 Hz): the chat engine's thread held 98% of the worker's busy samples, 78% in
decode steps and 17% in the other answers' prefills; the event loop (HTTP, streaming, citations, retrieval) 2%.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import rag_latency
from serving.launch import started_server

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("decode (", "prefill_step (", "finish_prefill (", "Scheduler._emit (", "sample (", "Batch.merge (",
         "Batch.select (", "sdpa_attention_forward (", "SlackLayer.update (")  # fmt: skip


def summary(raw: Path) -> dict[str, Any]:
    """py-spy's raw (collapsed) samples -> busy samples per thread, and per engine step within each thread."""
    threads: collections.Counter[str] = collections.Counter()
    steps: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = next((f.split(": ", 1)[-1] for f in frames if f.startswith("thread")), "?")
        threads[thread] += int(count)
        for step in STEPS:
            if any(step in f for f in frames):
                steps[thread][step.rstrip(" (")] += int(count)
    total = sum(threads.values()) or 1
    return {
        thread: {"share": round(n / total, 3), "steps": {k: round(v / n, 3) for k, v in steps[thread].most_common()}}
        for thread, n in threads.most_common()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=["SERVING_CHAT_VARIANT=int8"], metavar="SERVING_X=V")
    ap.add_argument("--seconds", type=int, default=25)
    a = ap.parse_args()
    spy = shutil.which("py-spy", path=str(ROOT / ".venv" / "bin")) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: .venv/bin/uv pip install --python .venv/bin/python py-spy")
    out = ROOT / "state" / "bench" / "profile_rag"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dict(kv.split("=", 1) for kv in a.set)}
    asked = rag_latency.questions(8)
    with started_server(ROOT, out / "server.log", env) as launched:
        load = threading.Thread(target=rag_latency.load, args=(launched.url, asked, 4, 2, 128))
        load.start()
        time.sleep(5)  # past the first prefills, into steady decoding (a profile, not a test: no event to wait on)
        subprocess.run([spy, "record", "--pid", str(launched.pid), "--subprocesses", "--threads", "--nonblocking",
                        "--duration", str(a.seconds), "--rate", "50", "--format", "raw",
                        "--output", str(out / "samples.txt")], check=True)  # fmt: skip
        load.join()
    for thread, figures in summary(out / "samples.txt").items():
        print(f"{figures['share']:6.1%}  {thread}  {figures['steps']}")
    print(f"samples in {(out / 'samples.txt').relative_to(ROOT)} (flamegraph.pl or speedscope read them)")


if __name__ == "__main__":
    main()
