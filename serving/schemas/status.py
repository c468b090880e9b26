"""/v1/models and /v1/status: what is served and whether it can serve."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from core.retrieval_params import Mode

# ---- models ----------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelplatform"
    version: str
    """Registry version served (for `rag`: chat and embedder versions)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- status ----------------------------------------------------------------------------------------


class EngineStatus(BaseModel):
    healthy: bool
    reason: str | None = None
    """Why the engine is unhealthy (None when healthy)."""
    running: int
    """Requests (chat) or texts (embedder) in the batch now."""
    waiting: int
    limit: int
    """Batch size allowed now (lower than configured after an out-of-memory backoff)."""
    prefix_cache: dict[str, int] | None = None
    """Chat, when prefix caching is on: `hits` (prefills that started from a kept prefix), `tokens_reused` (prompt
    tokens they did not run), `kept` (prefixes kept now)."""


class ServedVersion(BaseModel):
    name: str
    alias: str
    version: str
    from_cache_only: bool
    """True when the registry was unreachable at start-up and the local cache supplied the version."""

    @classmethod
    def of(cls, info: Any) -> ServedVersion:
        return cls(name=info.name, alias=info.alias, version=info.version, from_cache_only=info.from_cache_only)


class RolloutStatus(BaseModel):
    """The live rollout (serving/rollout.py): what it is doing, and why the last switch did not happen."""

    poll_s: float
    """Seconds between checks of the served aliases (0: off)."""
    state: Literal["off", "watching", "loading", "draining", "failed"]
    reason: str | None = None
    """What moved (loading, draining), or why the new versions are not served (failed)."""
    target: dict[str, str] | None = None
    """The versions being loaded, or that failed to load (`chat`, `retrieval`)."""
    checked_at: float | None = None
    """When the aliases were last read (Unix time)."""
    switched_at: float | None = None
    switches: int = 0


class StatusResponse(BaseModel):
    ready: bool
    reason: str | None = None
    """Why the server is not ready (None when ready)."""
    engines: dict[str, EngineStatus]
    models: dict[str, ServedVersion]
    index: str
    """The Chroma collection queries run against."""
    embedder_runtime: str
    """What runs the embedder: `sentence-transformers`, `onnxruntime-fp32` (`serving.embedder_backend`), or the int8
    variant's `onnxruntime-dynamic-int8-per-channel` (`serving.embedder_variant: int8`)."""
    search_mode: Mode
    """What search and RAG use when a request names no `mode` (the served `retrieval` version's)."""
    chunking: str
    """How the served chunks were cut (`tokens-200-32`, or `chars-1000-200` when the naive recipe is served)."""
    reranker: bool
    """Whether search and RAG rescore with a reranker by default (and /v1/rerank is served)."""
    reranker_runtime: str | None = None
    """What runs it: `sentence-transformers`, or the int8 variant's `onnxruntime-dynamic-int8-per-channel`
    (`serving.reranker_variant: int8`); None without a reranker."""
    abstain_below: float | None
    """RAG says it found nothing relevant when the best hit's score is below this (None: it always answers)."""
    abstain_score: str | None
    """Which score that is: `reranker` or `dense` (cosine)."""
    rollout: RolloutStatus | None = None
    """The live rollout's state (None where the server was built without one)."""
