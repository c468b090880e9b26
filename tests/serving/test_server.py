"""A real `bentoml serve` driven by the official openai SDK (and LangChain), plus httpx for the rest."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.serving.conftest import Server

pytestmark = pytest.mark.slow

Q = "How do I convert a Python object to a JSON string?"


@pytest.fixture(scope="module")
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _error(r: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


# ---- openai SDK --------------------------------------------------------------------------------------


def test_models_list_names_versions(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"chat", "embedder", "rag"}
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


def test_rag_as_a_chat_model(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": "rag",
            "messages": [{"role": "user", "content": Q}],
            "max_tokens": 8,
            "temperature": 0,
            "top_k": 2,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] is not None
    assert len(body["sources"]) == 2 and all(s["source"] for s in body["sources"])


def test_langchain_clients_work_unchanged(server: Server) -> None:
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    chat = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model="chat", max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert isinstance(chat.invoke("Say hi").content, str)
    emb = OpenAIEmbeddings(
        base_url=f"{server.url}/v1",
        api_key="unused",
        model="embedder",
        check_embedding_ctx_length=False,  # type: ignore[arg-type]
    )
    assert len(emb.embed_query("json")) == len(emb.embed_documents(["a", "b"])[1])


# ---- search and RAG over plain HTTP ------------------------------------------------------------------


def test_search(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/search", json={"query": Q, "top_k": 3}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    assert {"id", "text", "score", "source", "metadata"} <= set(results[0])
    assert results[0]["score"] >= results[-1]["score"]
    src = results[0]["source"]
    filtered = httpx.post(
        f"{server.url}/v1/search", json={"query": Q, "top_k": 3, "filter": {"source": src}}, timeout=60
    )
    assert all(x["source"] == src for x in filtered.json()["results"])


def test_rag_plain_and_streamed(server: Server) -> None:
    body = {"question": Q, "top_k": 2, "max_tokens": 8}
    r = httpx.post(f"{server.url}/v1/rag", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["sources"]) == 2 and out["usage"]["completion_tokens"] > 0
    with httpx.stream("POST", f"{server.url}/v1/rag", json={**body, "stream": True}, timeout=120) as s:
        lines = [ln for ln in s.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert events[0]["sources"] == out["sources"]
    assert "".join(e.get("delta", "") for e in events) == out["answer"]  # greedy: same answer
    assert events[-1]["usage"] == out["usage"]


# ---- errors: OpenAI body and the right status, never a 500 for bad input -----------------------------


def test_error_cases(server: Server) -> None:
    u = server.url
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert _error(httpx.post(f"{u}/v1/chat/completions", json={**chat, "model": "gpt-9"}), 404)["param"] == "model"
    assert _error(httpx.post(f"{u}/v1/embeddings", json={"model": "gpt-9", "input": "x"}), 404)["code"] == (
        "model_not_found"
    )
    assert "n must be 1" in _error(httpx.post(f"{u}/v1/chat/completions", json={**chat, "n": 2}), 400)["message"]
    assert _error(httpx.post(f"{u}/v1/chat/completions", json={**chat, "temperature": 9}), 400)["param"] == (
        "temperature"
    )
    bad_json = httpx.post(
        f"{u}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(bad_json, 400)
    assert _error(httpx.post(f"{u}/v1/chat/completions", json={**chat, "max_tokens": 10_000}), 400)["param"] == (
        "max_tokens"
    )
    long_text = "word " * 1100  # > the 1024-token window set for this server
    err = _error(
        httpx.post(f"{u}/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": long_text}]}), 400
    )
    assert err["code"] == "context_length_exceeded" and "1024" in err["message"]
    err = _error(httpx.post(f"{u}/v1/embeddings", json={"model": "embedder", "input": long_text}), 400)
    assert err["code"] == "context_length_exceeded"
    _error(httpx.post(f"{u}/v1/embeddings", json={"model": "embedder", "input": ["x"] * 17}), 413)
    _error(httpx.post(f"{u}/v1/embeddings", json={"model": "embedder", "input": "y" * 200_000}), 413)
    _error(httpx.post(f"{u}/v1/search", json={"query": "x", "top_k": 0}), 400)
    _error(httpx.post(f"{u}/v1/search", json={"query": "x", "filter": {"$nope": 1}}), 400)
    _error(httpx.post(f"{u}/v1/rag", json={"question": ""}), 400)


def test_queue_full_is_429_with_retry_after(server: Server) -> None:
    """4 slots and no queue on this server: 8 simultaneous requests must see some 429s, and no 5xx."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            body = {"model": "chat", "messages": [{"role": "user", "content": Q}], "max_tokens": 24}
            return await asyncio.gather(*(c.post(f"{server.url}/v1/chat/completions", json=body) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 429)


# ---- probes and metrics ------------------------------------------------------------------------------


def test_probes_and_metrics(server: Server) -> None:
    httpx.get(f"{server.url}/v1/models")  # so the request counter has a sample whatever ran before
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "modelplatform_requests_total",
        "modelplatform_time_to_first_token_seconds",
        "modelplatform_inter_token_seconds",
        "modelplatform_request_seconds",
        "modelplatform_queue_seconds",
        "modelplatform_batch_size",
        "modelplatform_completion_tokens_total",
    ):
        assert name in text, name
    assert 'route="/v1/chat/completions"' in text


def test_client_disconnect_frees_generation_slots(server: Server) -> None:
    """Fill all 4 slots with long streams, drop the connections, and the next 4 requests get slots (no 429)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": Q}], "max_tokens": 64, "stream": True}

    async def run() -> list[int]:
        for _ in range(4):
            async with (
                httpx.AsyncClient(timeout=60) as c,
                c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if '"content"' in line:
                        break  # leave mid-stream: the connection closes with the client
        await asyncio.sleep(1.5)  # a few decode steps for the engine to notice
        async with httpx.AsyncClient(timeout=120) as c:
            short = {**body, "stream": False, "max_tokens": 2}
            rs = await asyncio.gather(*(c.post(f"{server.url}/v1/chat/completions", json=short) for _ in range(4)))
        return [r.status_code for r in rs]

    assert asyncio.run(run()) == [200, 200, 200, 200]


def test_non_streaming_client_disconnect_frees_its_slot(server: Server) -> None:
    """4 long non-streamed requests whose clients give up after 1 s: their slots free up for the next 4
    (with no queue, a request still generating would turn the next ones into 429s)."""
    long = {"model": "chat", "messages": [{"role": "user", "content": Q}], "max_tokens": 64, "stream": False}

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=1.0) as c:
            gone = await asyncio.gather(
                *(c.post(f"{server.url}/v1/chat/completions", json=long) for _ in range(4)), return_exceptions=True
            )
        assert all(isinstance(g, httpx.TimeoutException) for g in gone), gone
        await asyncio.sleep(1.5)  # a poll interval and a few decode steps for the server to notice
        async with httpx.AsyncClient(timeout=120) as c:
            short = {**long, "max_tokens": 2}
            rs = await asyncio.gather(*(c.post(f"{server.url}/v1/chat/completions", json=short) for _ in range(4)))
        return [r.status_code for r in rs]

    assert asyncio.run(run()) == [200, 200, 200, 200]


def test_one_structured_log_line_per_request(server: Server) -> None:
    """Each API request is logged once, by the edge (request id, route, status, latency), not twice."""
    r = httpx.get(f"{server.url}/v1/models", headers={"x-request-id": "logcheck-1"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-request-id"] == "logcheck-1"
    for _ in range(50):  # the log is written by another process
        lines = [line for line in server.log.read_text().splitlines() if "logcheck-1" in line]
        if lines:
            break
        time.sleep(0.1)
    assert len(lines) == 1 and "route=/v1/models" in lines[0] and "status=200" in lines[0]
    assert not [line for line in server.log.read_text().splitlines() if "path=/v1/models" in line]
