"""BentoML entry point: `bentoml serve` (or `make serve`) from the repo root serves this on :3000.

Thin shell: the OpenAI-compatible routes are FastAPI routes mounted with `bentoml.asgi_app` (the
BentoVLLM approach), because `@bentoml.api` routes are POST-only (no GET /v1/models) and answer
schema errors with BentoML's own body rather than OpenAI's `{"error": {...}}`. Each route validates
(pydantic, via FastAPI), calls one `serving.api.OpenAIHandlers` method and returns its response;
errors are translated once in `serving.http`. The routes are module functions (see `api()`). BentoML
still provides /livez, /readyz (our `__is_ready__`: models loaded and warmed) and /metrics (our
histograms and counters included).

Layers: routes (this file, serving/http.py, serving/api.py) -> services (serving/engines/, assembled
in serving/platform.py) -> models (serving/registry.py: alias -> version -> cached files -> loaded).
"""

from __future__ import annotations

import logging
import os

import bentoml
import torch
from fastapi import Request
from fastapi.responses import Response

from serving.api import OpenAIHandlers, json_response
from serving.http import cancel_on_disconnect, create_app
from serving.metrics import PrometheusObserver, record_request
from serving.platform import Platform
from serving.registry import load_models
from serving.schemas import ChatCompletionRequest, EmbeddingRequest, RagRequest, SearchRequest
from serving.settings import load_settings, service_resources

SETTINGS = load_settings()
app = create_app(SETTINGS, on_request=record_request)


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
class ModelPlatform:
    def __init__(self) -> None:
        # BentoML leaves the root logger at WARNING; our per-request and start-up lines are INFO.
        for name in ("serving", "core"):
            logging.getLogger(name).setLevel(os.environ.get("LOG_LEVEL", "INFO"))
        if SETTINGS.serving.torch_threads:
            torch.set_num_threads(SETTINGS.serving.torch_threads)
        self.platform = Platform.build(load_models(SETTINGS), SETTINGS, observer=PrometheusObserver())
        self.platform.start()
        self.api = OpenAIHandlers(self.platform, SETTINGS)

    def __is_ready__(self) -> bool:
        return self.platform.is_ready()


# The routes are module functions, not methods of the class: BentoML injects `self` into FastAPI class
# views through a sync dependency, which FastAPI runs in its thread pool, a thread hop on every request
# (seen with py-spy under 64 embedding clients: ~40 pool threads and their GIL traffic).
def api() -> OpenAIHandlers:
    """The running service's handlers."""
    handlers: OpenAIHandlers = bentoml.get_current_service().api
    return handlers


@app.get("/models", response_model=None)
async def models() -> Response:
    return json_response(api().models())


@app.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    out = await cancel_on_disconnect(request, api().chat(body, request.state.log))
    return out if isinstance(out, Response) else json_response(out)


@app.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return json_response(await api().embeddings(body, request.state.log))


@app.post("/search", response_model=None)
async def search(body: SearchRequest, request: Request) -> Response:
    return json_response(await api().search(body, request.state.log))


@app.post("/rag", response_model=None)
async def rag(body: RagRequest, request: Request) -> Response:
    out = await cancel_on_disconnect(request, api().rag(body, request.state.log))
    return out if isinstance(out, Response) else json_response(out)
