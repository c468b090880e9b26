"""BentoML entry point: `bentoml serve` (or `make serve`) from the repo root serves this on :3000.

Thin shell: the OpenAI-compatible routes are FastAPI routes mounted with `bentoml.asgi_app` (the
BentoVLLM approach), because `@bentoml.api` routes are POST-only (no GET /v1/models) and answer
schema errors with BentoML's own body rather than OpenAI's `{"error": {...}}`. Each route validates
(pydantic, via FastAPI), calls one handler method (serving/handlers/) and hands the result to
`serving.http.respond`; errors are translated once in `serving.http`. The routes are module functions
(see `handlers()`). BentoML still provides /livez (our `__is_alive__`: false once an engine is unhealthy,
so an orchestrator restarts the process), /readyz (our `__is_ready__`: models loaded and warmed, engines
healthy) and /metrics (our histograms, counters and gauges included); /v1/status says why.

Layers: routes (this file, serving/http.py) -> handlers (serving/handlers/, one module per endpoint
family) -> services (serving/engines/, assembled in serving/platform.py) -> models (serving/registry.py:
alias -> version -> cached files -> loaded). The platform and its handlers are one `Live` set that a live rollout
(serving/rollout.py) replaces whole when a served registry alias moves; each request reads the set once.
"""

from __future__ import annotations

import logging

import bentoml
import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from serving import heap
from serving.handlers import Handlers
from serving.handlers.base import RequestRecord
from serving.http import cancel_on_disconnect, create_app, direct_post, respond
from serving.metrics import PrometheusObserver, record_request
from serving.playground import create_playground_app
from serving.rollout import Live, Rollout, build_platform
from serving.schemas import ChatCompletionRequest, EmbeddingRequest, RagRequest, RerankRequest, SearchRequest
from serving.schemas.anthropic import CountTokensRequest, MessagesRequest
from serving.schemas.completions import CompletionRequest, DetokenizeRequest, TokenizeRequest
from serving.settings import load_settings, service_resources

SETTINGS = load_settings()
heap.install()  # BentoML's request timeout, its timer cancelled once the response starts (serving/heap.py)
app = create_app(SETTINGS, on_request=record_request)
# vLLM serves /tokenize and /detokenize at the root, not under /v1: the same handlers, mounted there too
# (BentoML's PassiveMount matches only these two paths, so /readyz, /metrics and the rest stay BentoML's).
root_app = create_app(SETTINGS, on_request=record_request)
# The playground page at /playground (and / redirecting there): public static files, outside the API's edge.
playground_app = create_playground_app()


@bentoml.service(
    name="modelplatform",
    # One worker: continuous batching shares decode steps only among requests in the same process, and
    # each worker would hold its own copy of both models.
    workers=1,
    # GPU claimed where one is visible (or forced with SERVING_RESOURCES_GPU); CPU otherwise.
    resources=service_resources(SETTINGS.serving),
    # One line per API request: serving/http.py logs it with the request id, model version, sizes and
    # queue time, so BentoML's access line (the same request, fewer fields) is off.
    logging={"access": {"enabled": False}},
    # Our own deadline (request_timeout_s -> 504 with an OpenAI body) must fire before BentoML's.
    traffic={"timeout": int(SETTINGS.serving.request_timeout_s) + 30},
)
@bentoml.asgi_app(app, path="/v1")
@bentoml.asgi_app(root_app, path="/")
@bentoml.asgi_app(playground_app, path="/")
class ModelPlatform:
    def __init__(self) -> None:
        # BentoML leaves the root logger at WARNING; our per-request and start-up lines are INFO.
        for name in ("serving", "core"):
            logging.getLogger(name).setLevel(SETTINGS.log_level)
        if SETTINGS.serving.torch_threads:
            torch.set_num_threads(SETTINGS.serving.torch_threads)
        observer = PrometheusObserver()
        # Start-up and each live rollout build the same way: load what the aliases name, build, warm.
        self.rollout = Rollout(SETTINGS, lambda settings: build_platform(settings, observer))
        self.live = Live(build_platform(SETTINGS, observer), SETTINGS, self.rollout)
        self.rollout.start(self.live)
        # The loaded models out of the garbage collector's full passes (~0.5 s each under load; serving/heap.py)
        heap.freeze_heap()

    def __is_ready__(self) -> bool:
        return self.live.platform.is_ready()

    def __is_alive__(self) -> bool:
        return self.live.platform.is_alive()


# The routes are module functions, not methods of the class: BentoML injects `self` into FastAPI class
# views through a sync dependency, which FastAPI runs in its thread pool, a thread hop on every request
# (seen with py-spy under 64 embedding clients: ~40 pool threads and their GIL traffic).
def handlers() -> Handlers:
    """The handlers serving now (read once per request: a live rollout swaps them between requests)."""
    found: Handlers = bentoml.get_current_service().live.handlers
    return found


@app.get("/models", response_model=None)
async def models() -> Response:
    return respond(handlers().models.list())


@app.get("/status", response_model=None)
async def status() -> Response:
    return respond(handlers().models.status())


@app.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return respond(await cancel_on_disconnect(request, handlers().chat.completions(body, request.state.record)))


@direct_post(app, "/v1/embeddings", EmbeddingRequest)  # answered by the edge itself (serving/http.py says why)
async def embed(body: EmbeddingRequest, record: RequestRecord) -> Response:
    return respond(await handlers().embeddings.create(body, record))


@app.post("/embeddings", response_model=None)  # the same route as FastAPI sees it: /v1/openapi.json lists it
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await embed(body, request.state.record)


@app.post("/search", response_model=None)
async def search(body: SearchRequest, request: Request) -> Response:
    return respond(await handlers().retrieval.search(body, request.state.record))


@app.post("/rerank", response_model=None)
async def rerank(body: RerankRequest, request: Request) -> Response:
    return respond(await handlers().retrieval.rerank(body, request.state.record))


@app.post("/rag", response_model=None)
async def rag(body: RagRequest, request: Request) -> Response:
    return respond(await cancel_on_disconnect(request, handlers().rag.answer(body, request.state.record)))


@app.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return respond(await cancel_on_disconnect(request, handlers().completions.create(body, request.state.record)))


@app.post("/tokenize", response_model=None)
@root_app.post("/tokenize", response_model=None)
async def tokenize(body: TokenizeRequest) -> Response:
    return respond(handlers().completions.tokenize(body))


@app.post("/detokenize", response_model=None)
@root_app.post("/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest) -> Response:
    return respond(handlers().completions.detokenize(body))


# ---- Anthropic's Messages API (same engine path; Anthropic's error body on these routes: serving/http.py) ----


@app.post("/messages", response_model=None)
async def messages(body: MessagesRequest, request: Request) -> Response:
    return respond(await cancel_on_disconnect(request, handlers().messages.create(body, request.state.record)))


@app.post("/messages/count_tokens", response_model=None)
async def count_tokens(body: CountTokensRequest) -> Response:
    return JSONResponse(await handlers().messages.count_tokens(body))
