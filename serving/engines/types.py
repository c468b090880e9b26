"""Plain values passed between the routes and the engines (no pydantic, no HTTP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Constraint:
    """What the output must match (serving/engines/generation/grammar.py compiles it)."""

    kind: Literal["json_schema", "json_object", "lark"]
    source: str = ""
    """The JSON schema (serialized) or the Lark grammar; empty for `json_object` (any JSON object)."""
    param: str = "response_format"
    """The request field it came from, named by the 400 when it does not compile."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """Sample among the k most likely tokens only (0: all)."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    constraint: Constraint | None = None
    """Decode only what this grammar allows (None: free text)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    """Record each token's log-probability and this many best alternatives (0-20); None: record nothing."""
    ignore_eos: bool = False
    """Generate past the end-of-sequence token (it is then text like any other) until max_tokens or a stop string."""


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token as OpenAI reports it: its text, its UTF-8 bytes, its log-probability."""

    token: str
    bytes: list[int]
    logprob: float
    top: tuple[TokenLogprob, ...] = ()
    """The best alternatives at this position, best first (empty unless `top_logprobs` was asked)."""


@dataclass(frozen=True)
class TokenDelta:
    """One streamed step of a generation: new text (may be empty) and, on the last one, why it ended."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    """The tokens generated in this step, when the request asked for logprobs (the text may lag behind them:
    the detokenizer holds back what could begin a stop string)."""
    stop_sequence: str | None = None
    """On the last delta: the stop string that ended the answer (None: EOS, max_tokens, or still going)."""


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_sequence: str | None = None


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
