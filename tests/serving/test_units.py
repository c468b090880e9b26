"""Serving units without models or a server: settings, errors, schemas, SSE framing, rate limits, batcher."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core import errors
from core.config import ConfigError, load_params
from core.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    ServingError,
)
from serving.engines.embedder import EmbedderEngine
from serving.engines.generation.scheduler import torch_threads
from serving.errors import OPENAI_ERRORS, from_validation_errors, to_openai_error
from serving.http import RateLimiter, create_app, direct_post, respond, sse_stream
from serving.platform import Platform
from serving.rollout import Rollout
from serving.schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    RagRequest,
    SamplingLimits,
    SearchRequest,
)
from serving.settings import decode_threads, load_settings, service_resources

ROOT = Path(__file__).resolve().parents[2]


# ---- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["params.yaml", "profiles/tiny.yaml"])
def test_shipped_profiles_have_valid_serving_settings(name: str) -> None:
    s = load_settings(load_params(ROOT / name), environ={})
    assert s.serving.chat_max_batch_size >= 1
    assert s.cache_root().is_relative_to(ROOT / "state")


def test_env_overrides_are_typed_and_validated() -> None:
    env = {"SERVING_API_KEYS": "k1, k2", "SERVING_CHAT_MAX_BATCH_SIZE": "8", "MLFLOW_TRACKING_URI": "http://x:5000"}
    s = load_settings(load_params(ROOT / "params.yaml"), environ=env)
    assert s.serving.api_keys == ("k1", "k2")
    assert s.serving.chat_max_batch_size == 8
    assert s.tracking_uri == "http://x:5000"
    with pytest.raises(ConfigError, match="SERVING_CHAT_MAX_BATCH_SIZE"):
        load_settings(load_params(ROOT / "params.yaml"), environ={"SERVING_CHAT_MAX_BATCH_SIZE": "zero"})


def test_the_chat_variant_picks_the_registered_model_served() -> None:
    p = load_params(ROOT / "params.yaml")
    assert load_settings(p, environ={}).chat_name == p.models.chat_name
    assert load_settings(p, environ={"SERVING_CHAT_VARIANT": "int8"}).chat_name == p.models.chat_int8_name
    with pytest.raises(ConfigError, match="SERVING_CHAT_VARIANT"):
        load_settings(p, environ={"SERVING_CHAT_VARIANT": "int4"})


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "retry"),
    [
        (ContextLengthExceeded("too long", param="messages"), 400, False),
        (ModelNotFound("no such model", param="model"), 404, False),
        (PayloadTooLarge("big"), 413, False),
        (QueueFull("full", retry_after_s=2), 429, True),
        (RequestTimeout("slow"), 504, False),
        (RuntimeError("bug"), 500, False),
    ],
)
def test_one_mapping_to_openai_errors(exc: BaseException, status: int, retry: bool) -> None:
    err = to_openai_error(exc)
    assert err.status == status
    assert set(err.body["error"]) == {"message", "type", "param", "code"}
    assert ("Retry-After" in err.headers) is retry
    if status == 500:
        assert "bug" not in err.body["error"]["message"]  # internals are not leaked


def test_domain_errors_carry_no_http_and_each_has_a_row_at_the_edge() -> None:
    """core.errors knows nothing of HTTP; the edge's table has a row for every domain error class."""
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ServingError)]
    assert len(classes) >= 9
    for cls in classes:
        assert not {"status", "code", "type"} & set(vars(cls)), cls
        assert cls in OPENAI_ERRORS, cls
    source = Path(errors.__file__).read_text()
    assert "fastapi" not in source and "starlette" not in source


def test_validation_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "chat", "messages": [], "temperature": 5})
    err = from_validation_errors(info.value.errors())  # type: ignore[arg-type]
    assert to_openai_error(err).status == 400 and err.param in {"messages", "temperature"}
    assert "temperature" in err.message and "messages" in err.message


# ---- schemas ---------------------------------------------------------------------------------------


def test_chat_request_refuses_what_it_cannot_honour() -> None:
    base = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValidationError, match="less than or equal to 8"):
        ChatCompletionRequest.model_validate({**base, "n": 9})
    with pytest.raises(ValidationError, match="top_logprobs needs logprobs"):
        ChatCompletionRequest.model_validate({**base, "top_logprobs": 2})
    with pytest.raises(ValidationError, match="stop"):
        ChatCompletionRequest.model_validate({**base, "stop": ["a", "b", "c", "d", "e"]})
    req = ChatCompletionRequest.model_validate(
        {**base, "max_completion_tokens": 7, "stop": "\n", "user": "ignored", "temperature": 0}
    )
    limits = SamplingLimits(default_max_tokens=99, max_tokens=50)
    params = req.to_sampling(limits)
    assert (params.max_tokens, params.stop, params.temperature) == (7, ("\n",), 0.0)
    assert ChatCompletionRequest.model_validate(base).to_sampling(limits).max_tokens == 99  # the default
    with pytest.raises(InvalidRequest, match="at most 50") as over:
        ChatCompletionRequest.model_validate({**base, "max_tokens": 51}).to_sampling(limits)
    assert over.value.param == "max_tokens"
    with pytest.raises(InvalidRequest, match="at most 50"):
        RagRequest.model_validate({"question": "q", "max_tokens": 51}).to_sampling(limits)
    # vLLM's `ignore_eos` (its benchmark sends it) reaches the engine from both routes; off unless asked
    assert ChatCompletionRequest.model_validate({**base, "ignore_eos": True}).to_sampling(limits).ignore_eos
    assert RagRequest.model_validate({"question": "q", "ignore_eos": True}).to_sampling(limits).ignore_eos
    assert not req.to_sampling(limits).ignore_eos


def test_chat_request_accepts_content_parts_and_developer_role() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "chat",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
        }
    )
    assert req.template_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]


def test_embeddings_base64_is_little_endian_float32() -> None:
    v = np.array([[0.5, -0.25, 1.0]], dtype=np.float32)
    out = EmbeddingResponse.of("embedder", v, "base64", prompt_tokens=3)
    decoded = np.frombuffer(base64.b64decode(out.data[0].embedding), dtype="<f4")  # type: ignore[arg-type]
    assert np.array_equal(decoded, v[0])
    assert EmbeddingResponse.of("embedder", v, "float", 3).data[0].embedding == [0.5, -0.25, 1.0]


def test_embeddings_refuse_token_ids_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="check_embedding_ctx_length"):
        EmbeddingRequest.model_validate({"model": "embedder", "input": [[1, 2, 3]]})
    assert EmbeddingRequest.model_validate({"model": "embedder", "input": "x"}).texts() == ["x"]


# ---- SSE framing -----------------------------------------------------------------------------------


async def _collect(agen) -> list[str]:  # type: ignore[no-untyped-def]
    return [x async for x in agen]


def test_sse_frames_and_done() -> None:
    async def events():  # type: ignore[no-untyped-def]
        yield {"a": 1}
        yield {"b": 2}

    out = asyncio.run(_collect(sse_stream(events())))
    assert out == ['data: {"a": 1}\n\n', 'data: {"b": 2}\n\n', "data: [DONE]\n\n"]


def test_sse_error_after_start_is_an_error_event_without_done() -> None:
    async def events():  # type: ignore[no-untyped-def]
        yield {"a": 1}
        raise RequestTimeout("too slow")

    out = asyncio.run(_collect(sse_stream(events())))
    assert json.loads(out[-1].removeprefix("data: "))["error"]["code"] == "timeout"
    assert "data: [DONE]\n\n" not in out


# ---- rate limiter ----------------------------------------------------------------------------------


def test_rate_limiter_is_per_key_and_refills() -> None:
    now = [0.0]
    rl = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert rl.acquire("a") is None and rl.acquire("a") is None
    wait = rl.acquire("a")
    assert wait is not None and 0 < wait <= 30
    assert rl.acquire("b") is None  # another key has its own bucket
    now[0] += 30.0
    assert rl.acquire("a") is None


# ---- embedder micro-batcher (fake model: the batching, not the maths) ------------------------------


class _FakeTokenizer:
    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}


class _FakeST:
    max_seq_length = 8

    def __init__(self) -> None:
        self.tokenizer = _FakeTokenizer()
        self.batches: list[int] = []

    def get_embedding_dimension(self) -> int:
        return 2

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        self.batches.append(len(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_concurrent_requests_share_forward_passes() -> None:
    model = _FakeST()
    engine = EmbedderEngine(model, max_batch_size=16, max_wait_ms=20)  # type: ignore[arg-type]

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(engine.embed(["x" * i]) for i in range(1, 21)))

    results = asyncio.run(main())
    assert [int(r[0][0]) for r in results] == list(range(1, 21))  # each caller gets its own vector back
    assert sum(model.batches) == 20 and max(model.batches) == 16 and len(model.batches) <= 3


def test_embedder_checks_before_queueing() -> None:
    engine = EmbedderEngine(_FakeST(), max_inputs=3, max_queue=2)  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge):
        engine.check(["a"] * 4)
    with pytest.raises(ContextLengthExceeded, match=r"input\[1\] has 12 tokens"):
        engine.check(["short", " ".join(["w"] * 10)])
    with pytest.raises(QueueFull):
        asyncio.run(engine.embed(["a", "b", "c"]))


# ---- the HTTP edge on a stand-in route: auth, rate limit, body limit, error bodies ------------------


def test_edge_auth_rate_limit_and_body_limit() -> None:
    from fastapi.testclient import TestClient

    env = {"SERVING_API_KEYS": "good", "SERVING_RATE_LIMIT_PER_MINUTE": "3", "SERVING_MAX_BODY_BYTES": "2048"}
    seen: list[tuple[str, int]] = []
    settings = load_settings(load_params(ROOT / "params.yaml"), environ=env)
    app = create_app(settings, lambda route, status, _seconds, _stages: seen.append((route, status)))

    @app.post("/v1/search")
    async def search(body: SearchRequest) -> dict[str, str]:
        if body.query == "busy":
            raise QueueFull("full", retry_after_s=1)
        return {"ok": body.query}

    c = TestClient(app)
    ok = {"Authorization": "Bearer good"}
    assert c.post("/v1/search", json={"query": "a"}).status_code == 401
    assert c.post("/v1/search", json={"query": "a"}, headers={"Authorization": "Bearer bad"}).status_code == 401
    r = c.post("/v1/search", json={"query": "a"}, headers=ok)
    assert r.status_code == 200 and r.headers["x-request-id"]
    busy = c.post("/v1/search", json={"query": "busy"}, headers=ok)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert c.post("/v1/search", json={"query": "x" * 4000}, headers=ok).status_code == 413
    assert c.post("/v1/search", json={"query": "a"}, headers=ok).status_code == 200  # 3rd of 3 a minute
    limited = c.post("/v1/search", json={"query": "a"}, headers=ok)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert ("/v1/search", 401) in seen and ("/v1/search", 200) in seen


def test_a_direct_route_answers_in_the_edge_with_the_same_limits_and_errors() -> None:
    """`direct_post`: the route the edge answers itself (no FastAPI route of that path exists here) validates its body
    into the schema with the 400 FastAPI's validation gives, keeps auth, body limits, request ids and metrics, and
    turns a handler's error into its status; other paths still reach FastAPI."""
    from fastapi.testclient import TestClient

    env = {"SERVING_API_KEYS": "good", "SERVING_MAX_BODY_BYTES": "2048"}
    seen: list[tuple[str, int]] = []
    app = create_app(load_settings(load_params(ROOT / "params.yaml"), environ=env),
                     lambda route, status, _seconds, _stages: seen.append((route, status)))  # fmt: skip

    @direct_post(app, "/v1/embeddings", EmbeddingRequest)
    async def embed(body: EmbeddingRequest, record) -> object:  # type: ignore[no-untyped-def]
        if body.model != "embedder":
            raise ModelNotFound(f"model `{body.model}` does not exist", param="model")
        record.inputs = len(body.texts())
        return respond(EmbeddingResponse.of("embedder", np.ones((len(body.texts()), 2)), body.encoding_format, 1))

    c = TestClient(app, headers={"Authorization": "Bearer good"})
    r = c.post("/v1/embeddings", json={"model": "embedder", "input": ["a", "b"]}, headers={"x-request-id": "r1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "r1"
    assert [d["embedding"] for d in r.json()["data"]] == [[1.0, 1.0], [1.0, 1.0]]
    assert c.post("/v1/embeddings", json={"model": "gpt-9", "input": "a"}).status_code == 404
    for body, param in (({"input": "a"}, "model"), ({"model": "embedder", "input": [[1, 2]]}, "input")):
        err = c.post("/v1/embeddings", json=body)
        assert err.status_code == 400 and err.json()["error"]["param"] == param, err.text
    bad_json = c.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "embedder", "input": "'
        yield b"x" * 4000
        yield b'"}'

    assert c.post("/v1/embeddings", content=chunked()).status_code == 413
    assert TestClient(app).post("/v1/embeddings", json={"model": "embedder", "input": "a"}).status_code == 401
    assert c.get("/v1/embeddings").status_code == 404  # not POST: FastAPI answers, and it has no such route here
    assert ("/v1/embeddings", 200) in seen and ("/v1/embeddings", 400) in seen and ("/v1/embeddings", 413) in seen


def test_service_resources_claim_a_gpu_only_where_one_is_visible() -> None:
    base = load_settings(load_params(ROOT / "params.yaml"), environ={}).serving
    assert service_resources(base, visible_gpus=0) == {"cpu": "2", "memory": "4Gi"}
    assert service_resources(base, visible_gpus=2)["gpu"] == 1
    forced = load_settings(
        load_params(ROOT / "params.yaml"),
        environ={"SERVING_RESOURCES_GPU": "1", "SERVING_RESOURCES_GPU_TYPE": "nvidia-l4"},
    ).serving
    assert service_resources(forced, visible_gpus=0) == {"cpu": "2", "memory": "4Gi", "gpu": 1, "gpu_type": "nvidia-l4"}
    with pytest.raises(ConfigError, match="SERVING_RESOURCES_GPU"):
        load_settings(load_params(ROOT / "params.yaml"), environ={"SERVING_RESOURCES_GPU": "some"})


def test_the_bentoml_service_declares_its_resources() -> None:
    """What `bentoml serve`/`build` read: a GPU is claimed exactly where torch sees one (none on a CPU
    machine, so nothing waits for one), with the CPU and memory requests from params.yaml."""
    import service

    resources = service.ModelPlatform.config["resources"]
    assert ("gpu" in resources) == (torch.cuda.device_count() > 0)
    assert (resources["cpu"], resources["memory"]) == ("2", "4Gi")
    assert service.ModelPlatform.config["workers"] == 1


def test_the_index_location_is_overridable_for_containers() -> None:
    p = load_params(ROOT / "params.yaml")
    s = load_settings(p, environ={"SERVING_CHROMA_HOST": "chroma.internal", "SERVING_CHROMA_PORT": "8001"})
    assert (s.index.chroma_host, s.index.chroma_port) == ("chroma.internal", 8001)
    assert s.index.collection_prefix == p.index.collection_prefix
    with pytest.raises(ConfigError, match="SERVING_CHROMA_PORT"):
        load_settings(p, environ={"SERVING_CHROMA_PORT": "99999999"})


def test_a_lone_request_does_not_wait_for_company() -> None:
    """The wait window applies only after a pass that had company: with a 10-minute window, one client's
    requests still each run at once (the bound below is a hang guard, not a timing)."""
    model = _FakeST()
    engine = EmbedderEngine(model, max_batch_size=16, max_wait_ms=600_000)  # type: ignore[arg-type]

    async def main() -> None:
        for i in range(3):
            await asyncio.wait_for(engine.embed(["x" * (i + 1)]), timeout=60)

    asyncio.run(main())
    assert model.batches == [1, 1, 1]


class _Aliases(Rollout):
    """The rollout's decisions over fixed alias versions (the registry and the running set are the server test's:
    tests/serving/test_rollout.py); `build` fails like a broken version does."""

    def __init__(self, now: list[float]) -> None:
        settings = load_settings(load_params(ROOT / "params.yaml"), environ={"SERVING_ROLLOUT_POLL_S": "1"})
        super().__init__(settings, self._build, clock=lambda: now[0])
        self.aliases = {"chat": "2", "retrieval": "5"}
        self.builds = 0

    def _build(self, settings: object) -> Platform:
        self.builds += 1
        raise OSError("not a chat model")

    def wanted(self) -> dict[str, str]:
        return dict(self.aliases)

    def serving(self) -> dict[str, str]:
        return {"chat": "1", "retrieval": "5"}


def test_a_version_that_fails_to_load_is_retried_with_a_doubling_wait_until_the_alias_moves() -> None:
    now = [0.0]
    rollout = _Aliases(now)
    tries = []
    for t in (0.0, 0.5, 1.0, 2.5, 3.0, 6.9, 7.0):
        now[0] = t
        rollout.check()
        tries.append(rollout.builds)
    assert tries == [1, 1, 2, 2, 3, 3, 4]  # retried after 1, 2, then 4 s
    status = rollout.status()
    assert status.state == "failed" and "not a chat model" in (status.reason or "") and "8s" in (status.reason or "")
    rollout.aliases["chat"] = "3"  # another version: tried at once
    rollout.check()
    assert rollout.builds == 5
    rollout.aliases["chat"] = "1"  # back to what is served: nothing to load, and the failure is forgotten
    rollout.check()
    assert rollout.builds == 5 and rollout.status().state == "watching" and rollout.status().reason is None


def test_decode_threads_default_to_one_for_int8_and_are_set_back_after_the_step() -> None:
    base = load_settings().serving
    assert decode_threads(base.model_copy(update={"chat_variant": "int8"})) == 1
    assert decode_threads(base.model_copy(update={"chat_variant": "float"})) is None
    assert decode_threads(base.model_copy(update={"chat_variant": "float", "chat_decode_threads": 3})) == 3
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failed step")
    assert torch.get_num_threads() == before  # set back on failure too
    with torch_threads(None):
        assert torch.get_num_threads() == before
