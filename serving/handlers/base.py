"""What handlers hand back to the edge: the per-request record it logs, and a stream of events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel

CHAT, EMBEDDER, RAG = "chat", "embedder", "rag"
"""The model names clients send (see /v1/models)."""
RERANKER = "reranker"
"""The cross-encoder served by /v1/rerank (when one passed the gate)."""
RETRIEVAL = "retrieval"
"""The registered retrieval unit (search mode, lexical index), shown on /v1/status."""


@dataclass
class RequestRecord:
    """What one request did, filled in by its handler and logged once by the edge (serving/http.py)."""

    model: str | None = None
    version: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    queue_ms: float | None = None
    inputs: int | None = None
    """Embeddings: texts in the request."""
    tokens: int | None = None
    """Embeddings: tokens over all texts."""
    top_k: int | None = None
    mode: str | None = None
    """Search and RAG: dense, lexical or hybrid."""
    hits: int | None = None
    retrieve_ms: float | None = None
    """Search and RAG: the first retrieval stage (embed the query, dense and/or BM25 search, fusion)."""
    rerank_ms: float | None = None
    """Search and RAG, when reranked: the cross-encoder over the first stage's candidates."""
    prompt_ms: float | None = None
    """RAG: numbering the sources within the context budget and tokenising the prompt."""
    prompt: str | None = None
    """The last message, only when `serving.log_text` is on."""
    answer: str | None = None
    """The answer, only when `serving.log_text` is on."""

    def timed(self, timings: dict[str, float]) -> None:
        """Take an engine's stage timings (`retrieve`, `rerank`, `prompt`: milliseconds)."""
        self.retrieve_ms = timings.get("retrieve", self.retrieve_ms)
        self.rerank_ms = timings.get("rerank", self.rerank_ms)
        self.prompt_ms = timings.get("prompt", self.prompt_ms)

    def stages(self) -> dict[str, float]:
        """The stages timed so far, in milliseconds: what `Server-Timing` and the stage histogram report."""
        named = (("retrieve", self.retrieve_ms), ("rerank", self.rerank_ms), ("prompt", self.prompt_ms))
        return {k: v for k, v in (*named, ("queue", self.queue_ms)) if v is not None}

    def fields(self) -> dict[str, Any]:
        """The fields that were set, in declaration order."""
        return {k: v for k, v in asdict(self).items() if v is not None}


Event = BaseModel | dict[str, Any]


@dataclass
class EventStream:
    """A streamed answer: the events to send, and what frees the request's resources when the client goes.

    `on_close` runs after the response ends however it ends, including when the client left before the
    first event (the iterator then never started, so its own `finally` never ran).
    """

    events: AsyncIterator[Event]
    on_close: Callable[[], None]
    dialect: Literal["openai", "anthropic"] = "openai"
    """How the edge frames the events: `data:` lines ending with `[DONE]` (OpenAI), or `event:` + `data:` pairs
    named by each event's `type`, with no terminator (Anthropic)."""
