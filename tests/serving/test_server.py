"""A real `bentoml serve` driven by the official openai SDK (and LangChain), plus httpx for the rest.

The server runs with API keys on and a deterministically slow chat model (tests/serving/conftest.py):
tests that need requests to be generating when they act wait on /v1/status (the engines' running and
waiting counts), never on sleeps, so they hold on a fast machine and a slow one alike.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import API_KEYS, Server, until, until_status

pytestmark = pytest.mark.slow

Q = "How do I convert a Python object to a JSON string?"
LONG = 200  # tokens: >= 10 s of generation at the server's 50 ms per step
WAIT_S = 120  # hang guard for waiting on the server's state, not a timing


@pytest.fixture(scope="module")
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEYS[0], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as c:
        yield c


def _error(r: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


def _timing(r: httpx.Response) -> dict[str, float]:
    """The response's W3C `Server-Timing` header as {stage: milliseconds}."""
    parts = [p.strip().split(";dur=") for p in r.headers.get("server-timing", "").split(",") if p.strip()]
    return {name: float(ms) for name, ms in parts}


def _chat(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": Q}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


async def _wait_for(server: Server, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`until_status` on the chat engine's status, off the event loop (the test's clients keep running)."""
    status = await asyncio.to_thread(until_status, server, what, lambda s: ok(s["engines"]["chat"]), WAIT_S)
    return status["engines"]["chat"]  # type: ignore[no-any-return]


def _idle(chat: dict[str, Any]) -> bool:
    return chat["running"] == 0 and chat["waiting"] == 0


# ---- openai SDK --------------------------------------------------------------------------------------


def test_models_list_names_versions(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"chat", "embedder", "rag", "reranker"}  # the tiny gate promotes the reranker
    assert all(getattr(m, "version", None) for m in models.values())


def test_chat_plain_and_streamed_agree(client: OpenAI) -> None:
    messages = [{"role": "user", "content": Q}]
    plain = client.chat.completions.create(model="chat", messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage is not None and plain.usage.completion_tokens > 0
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # same greedy answer, streamed
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # usage chunk last, before [DONE]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == plain.choices[0].finish_reason


def test_embeddings_float_and_base64(client: OpenAI) -> None:
    texts = ["json.dumps", "open a file"]
    b64 = client.embeddings.create(model="embedder", input=texts)  # the SDK asks for base64 by default
    flt = client.embeddings.create(model="embedder", input=texts, encoding_format="float")
    a = np.array([d.embedding for d in b64.data])
    b = np.array([d.embedding for d in flt.data])
    assert a.shape == b.shape and a.shape[0] == 2
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert flt.usage.prompt_tokens > 0
    single = client.embeddings.create(model="embedder", input="json.dumps", encoding_format="float")
    assert np.allclose(single.data[0].embedding, b[0], atol=1e-5)


def test_the_embedder_runs_on_onnx_runtime_with_the_indexed_vectors(server: Server, http: httpx.Client) -> None:
    """`serving.embedder_backend: auto` on a CPU: the served version's fp32 ONNX export, which must give the vectors
    sentence-transformers gives (the index was built with those), exported once into the version's cache folder."""
    from core.loading import load_embedder
    from serving.registry import ONNX_DIR

    status = http.get("/v1/status").json()
    assert status["embedder_runtime"] == "onnxruntime-fp32"
    folder = server.project / "state/serving-cache/embedder" / status["models"]["embedder"]["version"]
    assert (folder / ONNX_DIR / "model.onnx").is_file()
    texts = ["json.dumps", "How do I read a file line by line in Python?", "zip " * 60]
    r = http.post("/v1/embeddings", json={"model": "embedder", "input": texts, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    served = np.array([d["embedding"] for d in r.json()["data"]])
    indexed = load_embedder(folder, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(served, indexed, atol=1e-5)


def test_rag_as_a_chat_model(http: httpx.Client) -> None:
    body = {**_chat(8), "top_k": 2, "min_score": -1.0}  # always answer (no score is below -1)
    r = http.post("/v1/chat/completions", json={**body, "model": "rag"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["message"]["content"] is not None
    _cited_sources_are_given(out["choices"][0]["message"]["content"], out["sources"], out["citations"])
    assert out["abstained"] is False and all(s["source"] and s["document"] for s in out["sources"])
    with http.stream("POST", "/v1/chat/completions", json={**body, "model": "rag", "stream": True}) as s:
        chunks = [json.loads(ln.removeprefix("data: ")) for ln in s.iter_lines() if ln and ln != "data: [DONE]"]
    assert chunks[0]["sources"] == out["sources"]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        == out["choices"][0]["message"]["content"]
    )
    assert chunks[-1]["citations"] == out["citations"] and chunks[-1]["choices"][0]["finish_reason"]


def _cited_sources_are_given(answer: str, sources: list[dict], citations: list[int]) -> None:  # type: ignore[type-arg]
    """Sources are numbered 1..n, two hits merged when neighbours; every citation left in the answer is of one."""
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))
    assert sum(len(s["chunk_ids"]) for s in sources) == 2  # top_k=2 hits, merged or not
    for s in sources:  # where the source lies in its document: one chunk's text is exactly its span
        start, end = s["span"]
        assert 0 <= start < end and (len(s["chunk_ids"]) > 1 or len(s["text"]) <= end - start)
    numbers = {int(n) for group in re.findall(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]", answer) for n in group.split(",")}
    assert numbers <= {s["number"] for s in sources} and set(citations) == numbers


def test_langchain_clients_work_unchanged(server: Server) -> None:
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    key = API_KEYS[1]  # either configured key is accepted
    chat = ChatOpenAI(base_url=f"{server.url}/v1", api_key=key, model="chat", max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert isinstance(chat.invoke("Say hi").content, str)
    emb = OpenAIEmbeddings(
        base_url=f"{server.url}/v1",
        api_key=key,  # type: ignore[arg-type]
        model="embedder",
        check_embedding_ctx_length=False,
    )
    assert len(emb.embed_query("json")) == len(emb.embed_documents(["a", "b"])[1])


# ---- search and RAG over plain HTTP ------------------------------------------------------------------


def test_search(http: httpx.Client) -> None:
    r = http.post("/v1/search", json={"query": Q, "top_k": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    assert {"id", "text", "score", "source", "metadata"} <= set(results[0])
    assert results[0]["score"] >= results[-1]["score"]
    src = results[0]["source"]
    filtered = http.post("/v1/search", json={"query": Q, "top_k": 3, "filter": {"source": src}})
    assert all(x["source"] == src for x in filtered.json()["results"])
    default = http.get("/v1/status").json()["search_mode"]
    assert r.json()["mode"] == default
    for mode in ("dense", "lexical", "hybrid"):
        out = http.post("/v1/search", json={"query": Q, "top_k": 3, "mode": mode, "filter": {"source": src}}).json()
        assert out["mode"] == mode and out["results"], out
        assert all(x["source"] == src and x["text"] for x in out["results"])
        scores = [x["score"] for x in out["results"]]
        assert scores == sorted(scores, reverse=True)
    assert _error(http.post("/v1/search", json={"query": Q, "mode": "sparse"}), 400)["param"] == "mode"


def test_search_mode_default_is_the_registered_choice(http: httpx.Client, server: Server) -> None:
    report = json.loads((server.project / "artifacts/reports/register.json").read_text())["retrieval"]
    status = http.get("/v1/status").json()
    assert status["search_mode"] == report["mode"] and status["chunking"] == report["chunking"]
    assert status["models"]["retrieval"]["version"] == report["version"]
    assert status["models"]["embedder"]["version"] == report["embedder_version"]  # the one the unit names
    assert status["reranker"] is report["reranker"]["promote"] is True  # the tiny gate lets it through
    assert status["models"]["reranker"]["version"] == report["reranker"]["version"]
    default = http.post("/v1/search", json={"query": Q, "top_k": 3}).json()
    plain = http.post("/v1/search", json={"query": Q, "top_k": 3, "rerank": False}).json()
    assert default["reranked"] is True and plain["reranked"] is False
    # each stage's time, for a person's browser tools and for the benchmark (and in /metrics, see below)
    reranked = http.post("/v1/search", json={"query": Q, "top_k": 3})
    first_only = http.post("/v1/search", json={"query": Q, "top_k": 3, "rerank": False})
    assert set(_timing(reranked)) == {"retrieve", "rerank"} and set(_timing(first_only)) == {"retrieve"}
    assert all(ms > 0 for ms in _timing(reranked).values())
    # the reranker's scores are relevance probabilities, and /v1/rerank gives the same for the same pair
    assert all(0.0 <= x["score"] <= 1.0 for x in default["results"])
    top = default["results"][0]
    again = http.post("/v1/rerank", json={"query": Q, "documents": [top["text"]]}).json()
    assert again["results"][0]["relevance_score"] == pytest.approx(top["score"], abs=1e-4)


def test_rerank_in_the_shape_vllm_and_tei_clients_send(http: httpx.Client) -> None:
    docs = ["json.dumps serialises an object to a JSON string", "Lists are mutable.", "The with statement"]
    r = http.post(
        "/v1/rerank", json={"model": "reranker", "query": "How do I write JSON?", "documents": docs, "top_n": 2}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "reranker" and out["usage"]["total_tokens"] > 0 and len(out["results"]) == 2
    scores = [x["relevance_score"] for x in out["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(docs[x["index"]] == x["document"]["text"] for x in out["results"])
    full = http.post("/v1/rerank", json={"query": "How do I write JSON?", "texts": docs, "return_documents": False})
    results = full.json()["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2] and all(x.get("document") is None for x in results)
    assert [x["relevance_score"] for x in results[:2]] == pytest.approx(scores, abs=1e-5)
    assert (
        _error(http.post("/v1/rerank", json={"query": "q", "documents": docs, "texts": docs}), 400)["param"]
        == "documents"
    )
    assert _error(http.post("/v1/rerank", json={"query": "q", "documents": []}), 400)["param"] == "documents"
    assert (
        _error(http.post("/v1/rerank", json={"model": "chat", "query": "q", "documents": docs}), 404)["param"]
        == "model"
    )


def test_rag_plain_and_streamed(http: httpx.Client) -> None:
    body = {"question": Q, "top_k": 2, "max_tokens": 8, "min_score": -1.0}  # always answer
    r = http.post("/v1/rag", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (
        out["abstained"] is False and out["usage"]["prompt_tokens"] > 0 and out["finish_reason"] in ("stop", "length")
    )
    _cited_sources_are_given(out["answer"], out["sources"], out["citations"])
    assert set(_timing(r)) == {"retrieve", "rerank", "prompt", "queue"}  # the whole answer is known: its queue too
    with http.stream("POST", "/v1/rag", json={**body, "stream": True}) as s:
        assert set(_timing(s)) == {"retrieve", "rerank", "prompt"}  # sent before the first token
        lines = [ln for ln in s.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert events[0]["sources"] == out["sources"]
    assert "".join(e.get("delta", "") for e in events) == out["answer"]  # greedy: same answer
    assert events[-1]["usage"] == out["usage"] and events[-1]["citations"] == out["citations"]
    assert events[-1]["abstained"] is False


def test_rag_abstains_below_the_threshold_plain_streamed_and_as_a_chat_model(http: httpx.Client) -> None:
    """Scores are at most 1 (reranker relevance, cosine): with min_score 2 nothing is relevant enough, so the
    answer says so, cites nothing and generates nothing; the registered threshold is on /v1/status."""
    status = http.get("/v1/status").json()
    assert status["abstain_score"] == "reranker" and 0.0 <= status["abstain_below"] <= 1.0  # tiny: a reranker serves
    body = {"question": Q, "max_tokens": 8, "min_score": 2.0}
    out = http.post("/v1/rag", json=body).json()
    assert out["abstained"] is True and out["sources"] == [] and out["citations"] == []
    assert out["answer"].startswith("I found nothing relevant") and out["usage"]["completion_tokens"] == 0
    with http.stream("POST", "/v1/rag", json={**body, "stream": True}) as s:
        events = [json.loads(ln.removeprefix("data: ")) for ln in s.iter_lines() if ln and ln != "data: [DONE]"]
    assert "".join(e.get("delta", "") for e in events) == out["answer"] and events[-1]["abstained"] is True
    chat = http.post("/v1/chat/completions", json={**_chat(8), "model": "rag", "min_score": 2.0}).json()
    assert chat["abstained"] is True and chat["choices"][0]["message"]["content"] == out["answer"]
    lexical = http.post("/v1/rag", json={**body, "mode": "lexical", "rerank": False})  # BM25: no scale to judge
    assert _error(lexical, 400)["param"] == "min_score"


# ---- errors: OpenAI body and the right status, never a 500 for bad input -----------------------------


def test_error_cases(http: httpx.Client) -> None:
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert _error(http.post("/v1/chat/completions", json={**chat, "model": "gpt-9"}), 404)["param"] == "model"
    assert _error(http.post("/v1/embeddings", json={"model": "gpt-9", "input": "x"}), 404)["code"] == (
        "model_not_found"
    )
    assert _error(http.post("/v1/chat/completions", json={**chat, "n": 9}), 400)["param"] == "n"
    assert _error(http.post("/v1/chat/completions", json={**chat, "model": "rag", "n": 2}), 400)["param"] == "n"
    assert _error(http.post("/v1/chat/completions", json={**chat, "temperature": 9}), 400)["param"] == "temperature"
    bad_json = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    _error(bad_json, 400)
    err = _error(http.post("/v1/chat/completions", json={**chat, "max_tokens": 10_000}), 400)
    assert err["param"] == "max_tokens" and "256" in err["message"]
    assert _error(http.post("/v1/rag", json={"question": "x", "max_tokens": 10_000}), 400)["param"] == "max_tokens"
    long_text = "word " * 1100  # > the 1024-token window set for this server
    err = _error(
        http.post("/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": long_text}]}), 400
    )
    assert err["code"] == "context_length_exceeded" and "1024" in err["message"]
    err = _error(http.post("/v1/embeddings", json={"model": "embedder", "input": long_text}), 400)
    assert err["code"] == "context_length_exceeded"
    _error(http.post("/v1/embeddings", json={"model": "embedder", "input": ["x"] * 17}), 413)
    _error(http.post("/v1/embeddings", json={"model": "embedder", "input": "y" * 200_000}), 413)
    # /v1/embeddings is answered by the edge itself (serving/http.py `direct_post`): the same 400s as FastAPI's
    _error(http.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert _error(http.post("/v1/embeddings", json={"input": "x"}), 400)["param"] == "model"
    err = _error(http.post("/v1/embeddings", json={"model": "embedder", "input": [[1, 2]]}), 400)
    assert err["param"] == "input" and "check_embedding_ctx_length" in err["message"]
    _error(http.post("/v1/search", json={"query": "x", "top_k": 0}), 400)
    _error(http.post("/v1/search", json={"query": "x", "filter": {"$nope": 1}}), 400)
    _error(http.post("/v1/rag", json={"question": ""}), 400)


def test_api_keys_on_the_real_server(server: Server) -> None:
    """Every /v1 route wants a configured key; the probes and metrics do not (schedulers call them)."""
    u = server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEYS[0]}):
        err = _error(httpx.get(f"{u}/v1/models", headers=headers), 401)
        assert err["code"] == "invalid_api_key" and "Bearer" in err["message"]
    _error(httpx.post(f"{u}/v1/embeddings", json={"model": "embedder", "input": "x"}), 401)
    for key in API_KEYS:
        assert httpx.get(f"{u}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for probe in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{u}{probe}").status_code == 200, probe


# ---- slots, queue and disconnects (the model is slow by construction; the tests wait on /v1/status) ----


def test_queue_full_is_429_and_a_dropped_stream_frees_its_slot(server: Server) -> None:
    """4 slots and no queue: with 4 long streams running, the next request is a 429 with Retry-After;
    once those clients hang up, the engine empties and the next 4 requests all get slots."""

    async def run() -> None:
        await _wait_for(server, "idle before the test", _idle)
        async with httpx.AsyncClient(headers=server.headers, timeout=WAIT_S) as c:
            opened = []
            for _ in range(4):
                cm = c.stream("POST", f"{server.url}/v1/chat/completions", json=_chat(LONG, stream=True))
                r = await cm.__aenter__()
                assert r.status_code == 200
                opened.append(cm)
            await _wait_for(server, "4 running", lambda s: s["running"] == 4)
            busy = await c.post(f"{server.url}/v1/chat/completions", json=_chat(2))
            err = _error(busy, 429)
            assert err["code"] == "queue_full" and int(busy.headers["retry-after"]) >= 1
            for cm in opened:  # the clients hang up mid-answer
                await cm.__aexit__(None, None, None)
        await _wait_for(server, "idle after the clients left", _idle)
        async with httpx.AsyncClient(headers=server.headers, timeout=WAIT_S) as c:
            rs = await asyncio.gather(*(c.post(f"{server.url}/v1/chat/completions", json=_chat(2)) for _ in range(4)))
        assert [r.status_code for r in rs] == [200, 200, 200, 200]

    asyncio.run(run())


def test_non_streaming_client_disconnect_frees_its_slot(server: Server) -> None:
    """4 long non-streamed requests whose clients give up: their generations are cancelled (the engine
    empties), and the next 4 requests get slots."""

    async def run() -> None:
        await _wait_for(server, "idle before the test", _idle)
        async with httpx.AsyncClient(headers=server.headers, timeout=WAIT_S) as c:
            tasks = [
                asyncio.create_task(c.post(f"{server.url}/v1/chat/completions", json=_chat(LONG))) for _ in range(4)
            ]
            await _wait_for(server, "4 running", lambda s: s["running"] == 4)
            for t in tasks:  # the clients give up: their connections close
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await _wait_for(server, "idle after the clients left", _idle)
        async with httpx.AsyncClient(headers=server.headers, timeout=WAIT_S) as c:
            rs = await asyncio.gather(*(c.post(f"{server.url}/v1/chat/completions", json=_chat(2)) for _ in range(4)))
        assert [r.status_code for r in rs] == [200, 200, 200, 200]

    asyncio.run(run())


def test_rag_prompts_reuse_the_kept_system_prompt(http: httpx.Client) -> None:
    """RAG prompts all begin with the same instructions: after two, the server keeps their KV (prefix caching), and
    the next prefill starts from it; /v1/status counts it."""

    def cache() -> dict[str, int]:
        return http.get("/v1/status").json()["engines"]["chat"]["prefix_cache"]  # type: ignore[no-any-return]

    before = cache()
    for q in ("How do I read a file?", "What does json.dumps do?", "How do I sort a list?"):
        assert http.post("/v1/rag", json={"question": q, "max_tokens": 1, "min_score": -1.0}).status_code == 200
    after = cache()
    assert after["kept"] >= 1 and after["hits"] >= before["hits"] + 1, (before, after)
    assert after["tokens_reused"] >= before["tokens_reused"] + 32


# ---- probes, status and metrics ----------------------------------------------------------------------


def test_status_says_what_is_served_and_why_ready(http: httpx.Client, server: Server) -> None:
    assert http.get("/readyz").status_code == 200
    s = http.get("/v1/status").json()
    assert s["ready"] is True and s.get("reason") is None
    assert {e: (v["healthy"], v.get("reason")) for e, v in s["engines"].items()} == {
        "chat": (True, None),
        "embedder": (True, None),
        "reranker": (True, None),
    }
    models = {m["id"]: m["version"] for m in http.get("/v1/models").json()["data"]}
    assert s["models"]["chat"]["version"] == models["chat"] and s["models"]["chat"]["alias"] == "champion"
    assert s["models"]["embedder"]["version"] == models["embedder"]
    metrics = http.get("/metrics").text  # the gauges exist before any request needs them
    for engine in ("chat", "embedder"):
        assert f'modelplatform_running{{engine="{engine}"}}' in metrics, engine
    manifest = json.loads((server.project / "artifacts/index/manifest.json").read_text())
    assert s["index"] == manifest["collection"] and str(manifest["embedder_version"]) == models["embedder"]


def _samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_request_moves_its_metrics(http: httpx.Client) -> None:
    """One chat request adds one to its route's counter and latency histogram, one time-to-first-token,
    its tokens to the token counters; the running/waiting gauges come back to zero afterwards."""
    chat_route = (("route", "/v1/chat/completions"), ("status", "200"))
    before = _samples(http)
    out = http.post("/v1/chat/completions", json=_chat(5)).json()
    chat_engine = (("engine", "chat"),)

    def counted_and_idle(after: dict[Any, float]) -> bool:
        counted = after.get(("modelplatform_requests_total", chat_route), 0) > before.get(
            ("modelplatform_requests_total", chat_route), 0
        )
        running, waiting = after[("modelplatform_running", chat_engine)], after[("modelplatform_waiting", chat_engine)]
        return counted and running == waiting == 0

    # The edge counts a request after its last byte is sent, and the engine reports its gauges at the end of the step
    # that answered it: both can trail the response, so wait for them.
    after = until("the request counted and the chat engine idle", lambda: _samples(http), counted_and_idle, WAIT_S)

    def moved(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert moved("modelplatform_requests_total", chat_route) == 1
    assert moved("modelplatform_request_seconds_count", (("route", "/v1/chat/completions"),)) == 1
    assert moved("modelplatform_time_to_first_token_seconds_count") == 1
    assert moved("modelplatform_prompt_tokens_total") == out["usage"]["prompt_tokens"]
    assert moved("modelplatform_completion_tokens_total") == out["usage"]["completion_tokens"]
    assert moved("modelplatform_inter_token_seconds_count") == out["usage"]["completion_tokens"] - 1
    assert moved("modelplatform_batch_size_count", (("engine", "chat"),)) >= out["usage"]["completion_tokens"] - 1
    assert moved("modelplatform_queue_seconds_count", (("engine", "chat"),)) == 1
    assert moved("modelplatform_stage_seconds_count", (("route", "/v1/chat/completions"), ("stage", "queue"))) == 1


def test_one_structured_log_line_per_request(http: httpx.Client, server: Server) -> None:
    """Each API request is logged once, by the edge (request id, route, status, latency, what it did)."""
    r = http.post("/v1/embeddings", json={"model": "embedder", "input": ["a", "b"]}, headers={"x-request-id": "lc-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "lc-1"
    lines = until(  # the log is written by another process
        "a log line for request lc-1",
        lambda: [line for line in server.log.read_text().splitlines() if "lc-1" in line],
        bool,
        WAIT_S,
    )
    assert len(lines) == 1, lines
    assert "route=/v1/embeddings" in lines[0] and "status=200" in lines[0] and "inputs=2" in lines[0]
    assert not [line for line in server.log.read_text().splitlines() if "path=/v1/embeddings" in line]
