"""Serving throughput: aggregate chat tokens/s at N concurrent streams vs 1, N streams with half of them
constrained by a JSON schema vs N free, and embedding texts/s at N single-text clients vs 1. Ratios are
against a baseline measured in the same run, on the same server.

    make bench                                                   # starts `bentoml serve` itself
    .venv/bin/python -m benchmarks.serving_throughput --url http://127.0.0.1:3000   # a running server

The load client shares the machine's cores with the server: compare only figures from one run.
Goodput counts 2xx answers only; errors are reported by count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from serving.launch import ServerStartError, started_server

PROMPTS = [
    "Explain what a Python decorator is.",
    "How do I read a file line by line?",
    "What does json.dumps do?",
    "Describe list comprehensions.",
]


# an open-ended schema (an unbounded string and array), so constrained streams run about as long as free ones
JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}, "examples": {"type": "array", "items": {"type": "string"}}},
            "required": ["answer", "examples"],
        },
    },
}


async def _stream(
    c: httpx.AsyncClient, url: str, i: int, max_tokens: int, constrained: bool = False, model: str = "chat"
) -> tuple[int, float]:
    """One streamed greedy answer: (completion tokens, seconds to the first content). Tokens come from the final
    usage chunk; a server that sends none (a peer) is counted one token per content delta."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = JSON_FORMAT
    start, ttft, tokens, deltas = time.perf_counter(), None, 0, 0
    async with c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0].get("delta", {}).get("content"):
                deltas += 1
                ttft = ttft if ttft is not None else time.perf_counter() - start
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    return tokens or deltas, ttft or 0.0


async def chat(url: str, n: int, max_tokens: int, constrained_every: int = 0, model: str = "chat") -> dict[str, Any]:
    """`n` concurrent streams; with `constrained_every` k > 0, every k-th one is held to `JSON_FORMAT`."""
    async with httpx.AsyncClient(timeout=600) as c:
        start = time.perf_counter()
        res = await asyncio.gather(
            *(
                _stream(c, url, i, max_tokens, bool(constrained_every) and i % constrained_every == 0, model)
                for i in range(n)
            )
        )
        wall = time.perf_counter() - start
    tokens = sum(t for t, _ in res)
    return {
        "streams": n,
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_median_s": round(statistics.median(t for _, t in res), 2),
        "ttfts_s": [round(t, 3) for _, t in res],
    }


async def embed(url: str, n: int, seconds: float) -> dict[str, float]:
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, i: int) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop:
            r = await c.post(f"{url}/v1/embeddings", json={"model": "embedder", "input": f"query number {i} {done}"})
            if r.status_code == 200:
                done += 1
            else:
                errors += 1

    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, i) for i in range(n)))
        wall = time.perf_counter() - start
    return {"clients": n, "texts_per_s": round(done / wall, 1), "errors": errors}


ROOT = Path(__file__).resolve().parent.parent


def _compare(name: str, one: dict[str, Any], many: dict[str, Any], n: int, key: str) -> dict[str, object]:
    """The baseline, the loaded run and their ratio on `key`, under keys `<name>_1`, `<name>_<n>`, `<name>_ratio`."""
    return {f"{name}_1": one, f"{name}_{n}": many, f"{name}_ratio": round(many[key] / one[key], 2)}


def run(a: argparse.Namespace, url: str) -> dict[str, object]:
    result: dict[str, object] = {}
    if not a.skip_chat:
        one = asyncio.run(chat(url, 1, a.max_tokens))
        many = asyncio.run(chat(url, a.streams, a.max_tokens))
        result |= _compare("chat", one, many, a.streams, "tokens_per_s")
        half = asyncio.run(chat(url, a.streams, a.max_tokens, constrained_every=2))
        result |= {f"chat_{a.streams}_half_json": half,
                   "chat_half_json_ratio": round(half["tokens_per_s"] / many["tokens_per_s"], 2)}  # fmt: skip
        print(json.dumps(result), flush=True)
    if not a.skip_embed:
        if shutil.which("wrk"):
            e1, en = embed_wrk(url, 1, a.embed_seconds), embed_wrk(url, a.clients, a.embed_seconds)
        else:
            print("wrk not found (apt-get install wrk): measuring with httpx, which under-reports", flush=True)
            e1 = asyncio.run(embed(url, 1, a.embed_seconds))
            en = asyncio.run(embed(url, a.clients, a.embed_seconds))
        result |= _compare("embed", e1, en, a.clients, "texts_per_s")
        print(json.dumps(result), flush=True)
    return result


def embed_wrk(url: str, n: int, seconds: float) -> dict[str, float]:
    """The same measurement with wrk (C, one thread): on 2 shared cores an asyncio client at 64 connections
    spends about as much CPU as the server, and then measures itself (seen here: 2.3x with httpx, 5.0x
    with wrk against the same server)."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{n}",
            f"-d{int(seconds)}s",
            "-s",
            str(ROOT / "benchmarks" / "embed.lua"),
            f"{url}/v1/embeddings",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(part.split("=") for part in out.strip().splitlines()[-1].split())
    return {
        "clients": n,
        "texts_per_s": float(fields["goodput"].removesuffix("/s")),
        "errors": int(fields["non2xx"]),
        "p50_ms": round(float(fields["p50_us"]) / 1000, 1),
        "p99_ms": round(float(fields["p99_us"]) / 1000, 1),
        "client": "wrk",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None, help="a running server; default: start one from this project")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--embed-seconds", type=float, default=15)
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-chat", action="store_true")
    a = ap.parse_args()
    if a.url:
        result = run(a, a.url)
    else:
        log = ROOT / "state" / "bench-server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with started_server(ROOT, log) as server:
                result = run(a, server.url)
        except ServerStartError as e:
            raise SystemExit(str(e)) from None
    out = ROOT / "state" / "bench" / "serving_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
