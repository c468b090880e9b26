"""Plain values passed between the routes and the engines (no pydantic, no HTTP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TokenDelta:
    """One streamed step of a generation: new text (may be empty) and, on the last one, why it ended."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class SearchHit:
    id: str
    text: str
    score: float
    """Cosine similarity (1 - Chroma's cosine distance): higher is closer."""
    source: str | None
    """The document's path relative to the corpus folder."""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineHealth:
    """Whether an engine can serve, and if not, why (shown on the status route, read by readiness)."""

    healthy: bool
    reason: str | None = None


class EngineObserver:
    """Hooks the engines call so the edge can record metrics; the default records nothing."""

    def load(self, engine: str, running: int, waiting: int) -> None:
        """Requests in the batch and in the queue, reported whenever either changes."""

    def queue_time(self, engine: str, seconds: float) -> None: ...

    def batch_size(self, engine: str, size: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...

    def tokens(self, prompt: int, completion: int) -> None: ...
