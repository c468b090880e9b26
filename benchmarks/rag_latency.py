"""RAG on our server: what retrieval, reranking and prompt building add before generation starts, and cited answers
under concurrent load; the issue's targets are in `targets`.

    .venv/bin/python -m benchmarks.peers --only rag     # part of `make bench`: float and int8 servers in turn

Stage times are the server's own, from each response's W3C `Server-Timing` header (`retrieve`: embed the query, dense
and BM25 search and fusion; `rerank`; `prompt`: number the sources within the context budget and tokenise the
prompt), the same figures `/metrics` counts in `modelplatform_stage_seconds`. One client sends the held-out questions
one after another with `max_tokens: 1`, so nothing else runs on the server meanwhile.

Under load, `clients` streams of RAG answers run at once, each answer exactly `max_tokens` long (`ignore_eos`, as
vLLM's benchmark does), so float and int8 are compared on the same amount of work: seconds per answer, time to the
first token, prompt tokens.

The reranker is timed in process when the server serves none (none has passed its gate on the default corpus):
the served engine class over each question's `rerank_candidates` first-stage hits, fetched from the server, with
the float reranker and its int8 form.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from typing import Any

import httpx

MAX_TOKENS, CLIENTS, PER_CLIENT = 128, 4, 2


def questions(n: int) -> list[str]:
    """The first `n` held-out questions (never trained on)."""
    import polars as pl

    from core import paths

    return pl.read_parquet(paths.EVAL_QUESTIONS)["query"].head(n).to_list()


def server_timing(header: str) -> dict[str, float]:
    """`retrieve;dur=12.3, prompt;dur=4.0` -> {"retrieve": 12.3, "prompt": 4.0} (milliseconds)."""
    parts = [p.strip().split(";dur=") for p in header.split(",") if ";dur=" in p]
    return {name: float(ms) for name, ms in parts}


def _pct(values: list[float], q: float, digits: int = 1) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], digits)


def stages(url: str, asked: list[str]) -> dict[str, Any]:
    """One client, one question at a time, one token each: p50/p99 per stage and of all of them before generation."""
    seen: list[dict[str, float]] = []
    prompt_tokens: list[int] = []
    with httpx.Client(base_url=url, timeout=120) as c:
        c.post("/v1/rag", json={"question": asked[0], "max_tokens": 1, "min_score": -1.0})  # warm-up
        for q in asked:
            r = c.post("/v1/rag", json={"question": q, "max_tokens": 1, "min_score": -1.0})
            r.raise_for_status()
            seen.append(server_timing(r.headers.get("server-timing", "")))
            prompt_tokens.append(r.json()["usage"]["prompt_tokens"])
    out: dict[str, Any] = {"questions": len(asked), "prompt_tokens_mean": round(statistics.mean(prompt_tokens))}
    for stage in ("retrieve", "rerank", "prompt"):
        values = [s[stage] for s in seen if stage in s]
        if values:
            out[f"{stage}_ms"] = {"p50": _pct(values, 0.5), "p99": _pct(values, 0.99)}
    before = [sum(v for k, v in s.items() if k != "queue") for s in seen]
    out["before_generation_ms"] = {"p50": _pct(before, 0.5), "p99": _pct(before, 0.99)}
    return out


async def _answer(c: httpx.AsyncClient, question: str, max_tokens: int) -> dict[str, Any]:
    body = {"question": question, "max_tokens": max_tokens, "min_score": -1.0, "ignore_eos": True, "stream": True}
    start, first, usage = time.perf_counter(), None, {}
    arrivals: list[float] = []
    async with c.stream("POST", "/v1/rag", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("delta"):
                arrivals.append(time.perf_counter())
                first = first if first is not None else arrivals[-1] - start
            usage = event.get("usage", usage)
    return {
        "seconds": time.perf_counter() - start,
        "ttft": first or 0.0,
        "gaps": [b - a for a, b in itertools.pairwise(arrivals)],
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
    }


async def _load(url: str, asked: list[str], clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        await _answer(c, asked[0], 8)  # warm-up

        async def client(i: int) -> list[dict[str, float]]:
            return [await _answer(c, asked[(i * per_client + j) % len(asked)], max_tokens) for j in range(per_client)]

        start = time.perf_counter()
        done = [a for answers in await asyncio.gather(*(client(i) for i in range(clients))) for a in answers]
        wall = time.perf_counter() - start
    return {
        "clients": clients,
        "answers": len(done),
        "max_tokens": max_tokens,
        "seconds_per_answer_p50": round(statistics.median(a["seconds"] for a in done), 2),
        "ttft_p50_s": round(statistics.median(a["ttft"] for a in done), 2),
        "token_gap_p99_s": _pct(gaps, 0.99, 3) if (gaps := [g for a in done for g in a["gaps"]]) else None,
        "token_gap_max_s": round(max(gaps), 3) if gaps else None,
        "prompt_tokens_mean": round(statistics.mean(a["prompt_tokens"] for a in done)),
        "completion_tokens_mean": round(statistics.mean(a["completion_tokens"] for a in done)),
        "tokens_per_s": round(sum(a["completion_tokens"] for a in done) / wall, 1),
    }


def load(url: str, asked: list[str], clients: int = CLIENTS, per_client: int = PER_CLIENT,
         max_tokens: int = MAX_TOKENS) -> dict[str, Any]:  # fmt: skip
    """`clients` concurrent streams of cited answers, `per_client` each, every answer exactly `max_tokens` long."""
    return asyncio.run(_load(url, asked, clients, per_client, max_tokens))


def rerank_candidates(url: str, asked: list[str]) -> tuple[int, list[list[str]]]:
    """The registered candidate count, and each question's first-stage hits at that depth, from the server."""
    from core.config import params

    depth = params().retrieval.rerank_candidates
    with httpx.Client(base_url=url, timeout=120) as c:
        hits = [
            c.post("/v1/search", json={"query": q, "top_k": depth, "rerank": False}).json()["results"] for q in asked
        ]
    return depth, [[h["text"] for h in found] for found in hits]


def rerank_in_process(asked: list[str], candidates: list[list[str]]) -> dict[str, Any] | str:
    """The served reranker engine over each question's candidates, one question at a time, ms p50/p99: the float
    reranker at `serving.rerank_batch_size` (the default), in one batch of 32 (the engine's default before pairs were
    batched small), and its int8 form (`serving.reranker_variant: int8`) when stage quantize_reranker made one."""
    from core import paths
    from core.config import params
    from core.loading import load_reranker
    from core.onnx_reranker import OnnxReranker
    from serving.engines.reranker import RerankerEngine

    if not paths.RERANKER_MODEL.exists():
        return f"{paths.RERANKER_MODEL} not found: run `dvc repro`"
    batch = params().serving.rerank_batch_size
    float_model = load_reranker(paths.RERANKER_MODEL, device="cpu")
    forms: dict[str, RerankerEngine] = {
        "float": RerankerEngine(float_model, batch_size=batch),
        "float, one batch of 32": RerankerEngine(float_model, batch_size=32),
    }
    if paths.RERANKER_INT8_MODEL.exists():
        forms["int8"] = RerankerEngine(OnnxReranker(paths.RERANKER_INT8_MODEL), batch_size=batch)

    async def timed(engine: RerankerEngine) -> list[float]:
        await engine.score(asked[0], candidates[0])  # warm-up
        out = []
        for q, docs in zip(asked, candidates, strict=True):
            start = time.perf_counter()
            await engine.score(q, docs)
            out.append((time.perf_counter() - start) * 1000)
        return out

    out: dict[str, Any] = {"questions": len(asked), "candidates": len(candidates[0]), "batch_size": batch}
    for name, engine in forms.items():
        ms = asyncio.run(timed(engine))
        out[name] = {"p50": _pct(ms, 0.5), "p99": _pct(ms, 0.99)}
    return out | out["float"]  # top level: what the default serves


def targets(rag: dict[str, Any]) -> dict[str, Any]:
    """This run's figures for the issue's RAG targets (each key names its target)."""
    stage = rag.get("stages", {})
    in_process = rag.get("rerank_in_process")
    rerank = stage.get("rerank_ms", {}).get("p50") or (in_process.get("p50") if isinstance(in_process, dict) else None)
    before = stage.get("before_generation_ms", {}).get("p50")
    first = [v for k, v in stage.items() if k in ("retrieve_ms", "prompt_ms")]
    without_rerank = round(sum(v["p50"] for v in first), 1) if first else before
    out: dict[str, Any] = {
        "retrieval + prompt p50 ms (target < 50)": without_rerank,
        "rerank p50 ms (target < 300)": rerank,
    }
    if isinstance(in_process, dict) and isinstance(in_process.get("int8"), dict):
        out["rerank p50 ms, int8 reranker (target < 300)"] = in_process["int8"]["p50"]
    float_, int8 = rag.get("ours (float)"), rag.get("ours (int8)")
    if isinstance(float_, dict) and isinstance(int8, dict):
        out["int8 / float seconds per answer at 4 concurrent"] = round(
            float_["seconds_per_answer_p50"] / int8["seconds_per_answer_p50"], 2
        )
    return out


def main() -> None:
    """Our server under RAG load with settings from the command line: what a person tuning
    `serving.chat_prefill_chunk_tokens` or `serving.chat_prefix_cache_tokens` runs, one setting against another."""
    import argparse
    import os
    from pathlib import Path

    from serving.launch import started_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], metavar="SERVING_X=V", help="environment for the server")
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--clients", type=int, default=CLIENTS)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    a = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **dict(kv.split("=", 1) for kv in a.set)}
    asked = questions(a.questions)
    log = root / "state" / "bench" / "rag_latency.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with started_server(root, log, env) as launched:
        out = load(launched.url, asked, a.clients, max(1, a.questions // a.clients), a.max_tokens)
        out["prefix_cache"] = httpx.get(f"{launched.url}/v1/status").json()["engines"]["chat"].get("prefix_cache")
    print(json.dumps({"settings": a.set, **out}))


if __name__ == "__main__":
    main()
