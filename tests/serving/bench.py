"""Throughput against a running server: aggregate chat tokens/s at N concurrent streams vs 1, and
embedding texts/s at N single-text clients vs 1. Ratios are against a baseline measured in the same run.

    .venv/bin/python tests/serving/bench.py --url http://127.0.0.1:3000 --streams 16 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

PROMPTS = [
    "Explain what a Python decorator is.",
    "How do I read a file line by line?",
    "What does json.dumps do?",
    "Describe list comprehensions.",
]


async def _stream(c: httpx.AsyncClient, url: str, i: int, max_tokens: int) -> tuple[int, float]:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, ttft, tokens = time.perf_counter(), None, 0
    async with c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ttft is None and ev.get("choices") and ev["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    return tokens, ttft or 0.0


async def chat(url: str, n: int, max_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as c:
        start = time.perf_counter()
        res = await asyncio.gather(*(_stream(c, url, i, max_tokens) for i in range(n)))
        wall = time.perf_counter() - start
    tokens = sum(t for t, _ in res)
    return {
        "streams": n,
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_median_s": round(statistics.median(t for _, t in res), 2),
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--embed-seconds", type=float, default=15)
    ap.add_argument("--skip-embed", action="store_true")
    a = ap.parse_args()
    one = asyncio.run(chat(a.url, 1, a.max_tokens))
    many = asyncio.run(chat(a.url, a.streams, a.max_tokens))
    print(
        json.dumps(
            {"chat_1": one, f"chat_{a.streams}": many, "ratio": round(many["tokens_per_s"] / one["tokens_per_s"], 2)}
        )
    )
    if not a.skip_embed:
        e1 = asyncio.run(embed(a.url, 1, a.embed_seconds))
        en = asyncio.run(embed(a.url, a.clients, a.embed_seconds))
        print(
            json.dumps(
                {"embed_1": e1, f"embed_{a.clients}": en, "ratio": round(en["texts_per_s"] / e1["texts_per_s"], 2)}
            )
        )


if __name__ == "__main__":
    main()
