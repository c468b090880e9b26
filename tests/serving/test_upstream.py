"""Hosted models behind our endpoint (`serving.upstreams`), tested with a second real `bentoml serve` as the
gateway and the shared server as its upstream (no hosted API can be reached here): both SDKs, both upstream
dialects, conversion between them, streaming, the upstream's key, 502 for an unreachable upstream and an
upstream's 4xx passed on. The gateway serves its own `chat`, embedder and reranker as their int8 variants
(`SERVING_CHAT_VARIANT=int8`, `SERVING_EMBEDDER_VARIANT=int8`, `SERVING_RERANKER_VARIANT=int8`), so one extra server
start covers that configuration too.

    clients -> proxy (this module's server: upstreams `remote-*`) -> server (the shared one: `chat`)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import numpy as np
import openai
import pytest
import torch

from core.loading import load_chat
from serving.launch import ServerStartError, free_port, started_server
from tests.conftest import project_env
from tests.serving.conftest import API_KEYS, SERVER_ENV, STARTUP_TIMEOUT_S, Server
from tests.serving.tools import WEATHER_ANTHROPIC, WEATHER_OPENAI

pytestmark = pytest.mark.slow

PROXY_KEY = "proxy-key"
UPSTREAM_KEY = API_KEYS[1]  # the shared server's second key: the proxy must send it, and never log it
ASK = [{"role": "user", "content": "What does json.dumps do?"}]


@pytest.fixture(scope="module")
def proxy(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("proxy")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fast_fail = {"max_retries": 0, "timeout_s": 10}
    upstreams = {
        "remote-chat": {"dialect": "openai", "base_url": f"{server.url}/v1", "model": "chat",
                        "api_key_env": "UPSTREAM_KEY"},
        "remote-claude": {"dialect": "anthropic", "base_url": server.url, "model": "chat",
                          "api_key_env": "UPSTREAM_KEY"},
        "remote-wrong-key": {"dialect": "openai", "base_url": f"{server.url}/v1", "model": "chat",
                             "api_key_env": "WRONG_KEY", **fast_fail},
        "remote-down": {"dialect": "openai", "base_url": f"{down}/v1", "model": "chat", **fast_fail},
        "remote-claude-down": {"dialect": "anthropic", "base_url": down, "model": "chat", **fast_fail},
    }  # fmt: skip
    env = {
        **project_env(server.project), **SERVER_ENV, "BENTOML_HOME": str(folder / "bentoml-home"),
        "SERVING_API_KEYS": PROXY_KEY, "SERVING_DEBUG_STEP_DELAY_MS": "0",
        "SERVING_UPSTREAMS": json.dumps(upstreams), "UPSTREAM_KEY": UPSTREAM_KEY, "WRONG_KEY": "not-a-key",
        "SERVING_CHAT_VARIANT": "int8", "SERVING_EMBEDDER_VARIANT": "int8", "SERVING_RERANKER_VARIANT": "int8",
    }  # fmt: skip
    log = folder / "bentoml.log"
    try:
        with started_server(server.project, log, env, timeout_s=STARTUP_TIMEOUT_S) as launched:
            yield Server(launched.url, server.project, log)
    except ServerStartError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def gpt(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=PROXY_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(proxy: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=PROXY_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def direct(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEYS[0], max_retries=0, timeout=120)


def test_upstream_models_are_listed_beside_ours(gpt: openai.OpenAI) -> None:
    models = {m.id: m for m in gpt.models.list()}
    assert {"chat", "rag", "remote-chat", "remote-claude"} <= set(models)
    assert models["remote-chat"].owned_by == "upstream:openai"
    assert models["remote-claude"].owned_by == "upstream:anthropic"


def test_openai_upstream_answers_as_the_model_itself_plain_and_streamed(
    gpt: openai.OpenAI, direct: openai.OpenAI
) -> None:
    kw: Any = {"messages": ASK, "max_tokens": 12, "temperature": 0}
    want = direct.chat.completions.create(model="chat", **kw)
    got = gpt.chat.completions.create(model="remote-chat", **kw)
    assert got.model == "remote-chat"
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.usage is not None and want.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
        want.usage.prompt_tokens,
        want.usage.completion_tokens,
    )
    chunks = list(gpt.chat.completions.create(model="remote-chat", stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.choices[0].message.content


def test_the_gateway_serves_the_int8_variant_of_the_same_champion(
    gpt: openai.OpenAI, proxy: Server, server: Server
) -> None:
    """`SERVING_CHAT_VARIANT=int8`: the gateway's own `chat` is `chat-int8@champion`, the int8 form of the float
    version the shared server serves, and its greedy answer is the int8 model's own `generate`."""
    int8 = httpx.get(f"{proxy.url}/v1/status", headers={"Authorization": f"Bearer {PROXY_KEY}"}).json()
    floating = httpx.get(f"{server.url}/v1/status", headers=server.headers).json()
    assert int8["models"]["chat"]["name"] == "chat-int8" and floating["models"]["chat"]["name"] == "chat"
    script = (
        "import json\nfrom core.registry import Registry\nv = Registry().describe('chat-int8', 'champion')\n"
        "print(json.dumps([v.version, v.tags['quantized_from']]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=server.project,
        env=project_env(server.project),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, source = json.loads(proc.stdout.strip().splitlines()[-1])
    assert int8["models"]["chat"]["version"] == version and source == f"chat/{floating['models']['chat']['version']}"

    answer = gpt.chat.completions.create(model="chat", messages=ASK, max_tokens=12, temperature=0)
    model, tok = load_chat(server.project / "state/serving-cache/chat-int8" / version, device="cpu")
    enc = tok.apply_chat_template(ASK, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert answer.choices[0].message.content == tok.decode(
        out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
    )


def test_the_gateway_embeds_and_searches_with_the_int8_embedder_over_its_own_index(
    gpt: openai.OpenAI, proxy: Server, server: Server
) -> None:
    """`SERVING_EMBEDDER_VARIANT=int8`: the gateway embeds with the int8 ONNX form the retrieval unit names (the
    pipeline's own int8 model, registered), and searches the collection built with it, never the float one."""
    from core.config import IndexParams
    from core.onnx_embedder import METHOD, OnnxEmbedder
    from core.retrieval_unit import read_unit
    from core.vectorstore import chroma_client

    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    int8 = httpx.get(f"{proxy.url}/v1/status", headers=headers).json()
    floating = httpx.get(f"{server.url}/v1/status", headers=server.headers).json()
    assert int8["embedder_runtime"] == METHOD and floating["embedder_runtime"] == "onnxruntime-fp32"
    unit, _ = read_unit(server.project / "state/serving-cache/retrieval" / int8["models"]["retrieval"]["version"])
    assert unit.embedder("int8") == ("embedder-int8", int8["models"]["embedder"]["version"])
    assert int8["models"]["embedder"]["name"] == "embedder-int8"
    manifest = json.loads((server.project / "artifacts/index/manifest.json").read_text())["variants"]
    assert int8["index"] == manifest["int8"]["collection"] != floating["index"] == manifest["float"]["collection"]

    text = "How do I read a file line by line in Python?"
    served = gpt.embeddings.create(model="embedder", input=[text]).data[0].embedding
    made = OnnxEmbedder(server.project / "artifacts/models/embedder_int8").encode([text])[0]
    assert max(abs(a - b) for a, b in zip(served, made, strict=True)) < 1e-5
    # dense search scores are the int8 query vector against the int8 collection's vectors (cosine), nothing else
    body = {"query": text, "top_k": 3, "mode": "dense", "rerank": False}
    found = httpx.post(f"{proxy.url}/v1/search", headers=headers, json=body)
    assert found.status_code == 200, found.text
    hits = found.json()["results"]
    client = chroma_client(IndexParams(chroma_path=str(server.project / "state/chroma")))
    stored = client.get_collection(int8["index"]).get(ids=[h["id"] for h in hits], include=["embeddings"])
    vectors = dict(zip(stored["ids"], np.asarray(stored["embeddings"]), strict=True))
    cosines = [float(vectors[h["id"]] @ np.asarray(served)) for h in hits]
    assert [h["score"] for h in hits] == pytest.approx(cosines, abs=1e-4)


def test_the_gateway_reranks_with_the_int8_reranker_the_unit_names(proxy: Server, server: Server) -> None:
    """`SERVING_RERANKER_VARIANT=int8`: /v1/rerank and search's reranking score with the int8 ONNX form of the
    unit's reranker (registered as `reranker-int8`), the pipeline's own int8 model's scores."""
    from core.onnx_embedder import METHOD
    from core.onnx_reranker import OnnxReranker
    from core.retrieval_unit import read_unit

    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    int8 = httpx.get(f"{proxy.url}/v1/status", headers=headers).json()
    floating = httpx.get(f"{server.url}/v1/status", headers=server.headers).json()
    assert int8["reranker_runtime"] == METHOD and floating["reranker_runtime"] == "sentence-transformers"
    unit, _ = read_unit(server.project / "state/serving-cache/retrieval" / int8["models"]["retrieval"]["version"])
    assert unit.reranker("int8") == ("reranker-int8", int8["models"]["reranker"]["version"])
    assert (int8["models"]["reranker"]["name"], floating["models"]["reranker"]["name"]) == ("reranker-int8", "reranker")

    query = "How do I write JSON?"
    docs = ["json.dump writes an object to a file.", "zip archives", "Lists are mutable."]
    out = httpx.post(f"{proxy.url}/v1/rerank", headers=headers, json={"query": query, "documents": docs})
    assert out.status_code == 200, out.text
    served = {r["index"]: r["relevance_score"] for r in out.json()["results"]}
    made = OnnxReranker(server.project / "artifacts/models/reranker_int8").predict([(query, d) for d in docs], 2)
    assert [served[i] for i in range(len(docs))] == pytest.approx(made.tolist(), abs=1e-5)
    # search reranks its candidates with the same model: each hit's score is that model's for its text
    found = httpx.post(f"{proxy.url}/v1/search", headers=headers, json={"query": query, "top_k": 3, "rerank": True})
    assert found.status_code == 200, found.text
    hits = found.json()["results"]
    scored = OnnxReranker(server.project / "artifacts/models/reranker_int8").predict([(query, h["text"]) for h in hits])
    assert [h["score"] for h in hits] == pytest.approx(scored.tolist(), abs=0.01)  # batch-mates differ: 0.01


def test_n_and_logprobs_pass_through(gpt: openai.OpenAI) -> None:
    out = gpt.chat.completions.create(
        model="remote-chat", messages=ASK, max_tokens=4, temperature=0.8, seed=3, n=2, logprobs=True, top_logprobs=2
    )
    assert [c.index for c in out.choices] == [0, 1]
    for c in out.choices:
        assert c.logprobs is not None and c.logprobs.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in c.logprobs.content)
    tokens = sum(len(c.logprobs.content or []) for c in out.choices if c.logprobs)
    assert out.usage is not None and out.usage.completion_tokens == tokens


def test_openai_client_calls_a_tool_through_an_anthropic_upstream(gpt: openai.OpenAI) -> None:
    kw: Any = {
        "model": "remote-claude", "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_OPENAI], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False, "max_tokens": 48, "temperature": 0,  # one call: 48 tokens hold it whole
    }  # fmt: skip
    out = gpt.chat.completions.create(**kw)
    [call] = out.choices[0].message.tool_calls or []
    assert out.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert set(args) == {"city", "unit"}
    # the history goes back through the conversion: an assistant call and its tool result
    history = [
        *kw["messages"], out.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]  # fmt: skip
    answer = gpt.chat.completions.create(**{**kw, "messages": history, "tool_choice": "none", "max_tokens": 8})
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    streamed = list(gpt.chat.completions.create(**kw, stream=True))
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas] == ["get_weather"]  # type: ignore[union-attr]
    assert json.loads(deltas[0].function.arguments) == args  # type: ignore[union-attr,arg-type]
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_anthropic_client_through_an_openai_upstream(claude: anthropic.Anthropic, server: Server) -> None:
    # greedy on both paths: the shared server's /v1/messages defaults to temperature 0 (SERVER_ENV); through the
    # proxy the client's own temperature goes upstream (today's SDK sends one only through extra_body)
    want = httpx.post(
        f"{server.url}/v1/messages", headers={"x-api-key": API_KEYS[0]}, timeout=120,
        json={"model": "chat", "messages": ASK, "max_tokens": 12, "system": "Be brief."},
    ).json()  # fmt: skip
    kw: Any = {"messages": ASK, "max_tokens": 12, "system": "Be brief.", "extra_body": {"temperature": 0}}
    out = claude.messages.create(model="remote-chat", **kw)
    assert out.content[0].type == "text" and out.content[0].text == want["content"][0]["text"]
    assert out.stop_reason == want["stop_reason"] and out.usage.output_tokens == want["usage"]["output_tokens"]
    with claude.messages.stream(model="remote-chat", **kw) as stream:
        assert "".join(stream.text_stream) == want["content"][0]["text"]
    tool = WEATHER_ANTHROPIC
    used = claude.messages.create(
        model="remote-chat", messages=[{"role": "user", "content": "Weather in Rome?"}], max_tokens=48,
        tools=[tool], tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body={"temperature": 0},
    )  # fmt: skip
    assert used.stop_reason == "tool_use"
    [block] = [b for b in used.content if b.type == "tool_use"]
    assert block.name == "get_weather" and set(block.input) == {"city", "unit"}  # type: ignore[union-attr,arg-type]


def test_anthropic_upstream_streams_and_counts(claude: anthropic.Anthropic) -> None:
    kw: Any = {"messages": ASK, "max_tokens": 10, "extra_body": {"temperature": 0}}
    out = claude.messages.create(model="remote-claude", **kw)
    with claude.messages.stream(model="remote-claude", **kw) as stream:
        text = "".join(stream.text_stream)
    assert text == out.content[0].text and out.stop_reason in ("end_turn", "max_tokens")  # type: ignore[union-attr]
    assert claude.messages.count_tokens(model="remote-claude", messages=ASK).input_tokens == out.usage.input_tokens
    with pytest.raises(anthropic.BadRequestError, match="cannot count tokens ahead"):
        claude.messages.count_tokens(model="remote-chat", messages=ASK)


def test_unreachable_upstream_is_a_502_naming_it_in_both_dialects(
    gpt: openai.OpenAI, claude: anthropic.Anthropic, proxy: Server
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        gpt.chat.completions.create(model="remote-down", messages=ASK, max_tokens=4)
    assert caught.value.status_code == 502
    assert "remote-down" in caught.value.message and "could not be reached" in caught.value.message
    with pytest.raises(anthropic.APIStatusError) as got:
        claude.messages.create(model="remote-claude-down", messages=ASK, max_tokens=4)  # type: ignore[arg-type]
    assert got.value.status_code == 502 and "remote-claude-down" in got.value.message
    with pytest.raises(openai.APIStatusError, match="remote-down"):
        list(gpt.chat.completions.create(model="remote-down", messages=ASK, max_tokens=4, stream=True))
    metrics = httpx.get(f"{proxy.url}/metrics", timeout=30).text
    assert 'route="/v1/chat/completions",status="502"' in metrics


def test_upstream_refusals_are_passed_on(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError, match="remote-wrong-key"):
        gpt.chat.completions.create(model="remote-wrong-key", messages=ASK, max_tokens=4)
    with pytest.raises(openai.BadRequestError) as caught:  # over the upstream's own max_tokens cap
        gpt.chat.completions.create(model="remote-chat", messages=ASK, max_tokens=100_000)
    assert "max_tokens" in caught.value.message and caught.value.param == "max_tokens"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as missing:  # Anthropic's API has no `n`: said, not ignored
        gpt.chat.completions.create(model="remote-claude", messages=ASK, max_tokens=4, n=2)
    assert "`n`" in missing.value.message


def test_the_upstream_key_is_sent_and_never_logged(gpt: openai.OpenAI, proxy: Server) -> None:
    # the shared server refuses requests without one of its keys, so every answer above proves it was sent
    gpt.chat.completions.create(model="remote-chat", messages=ASK, max_tokens=2)
    assert UPSTREAM_KEY not in proxy.log.read_text()
