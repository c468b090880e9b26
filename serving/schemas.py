"""The wire format: OpenAI-compatible pydantic schemas for every route, plus /v1/search and /v1/rag.

Requests validate themselves (field constraints, `model_validator`) and convert themselves into the
engines' plain types (`to_sampling`); responses are built from the engines' results. Nothing here
runs a model or knows about BentoML.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.context import Source
from core.errors import InvalidRequest
from core.retrieval_params import Mode
from core.serving_params import ServingParams
from serving.engines.types import Completion, SamplingParams, SearchHit


@dataclass(frozen=True)
class SamplingLimits:
    """The server's bounds on what a request may ask for, applied by the requests' `to_sampling`."""

    default_max_tokens: int
    max_tokens: int

    @classmethod
    def of(cls, serving: ServingParams) -> SamplingLimits:
        return cls(default_max_tokens=serving.chat_default_max_tokens, max_tokens=serving.chat_max_tokens)

    def max_new_tokens(self, requested: int | None) -> int:
        """The tokens to generate: the request's number, else the default.

        Raises:
            InvalidRequest: the request asks for more than this server allows.
        """
        if requested is not None and requested > self.max_tokens:
            raise InvalidRequest(
                f"max_tokens is {requested}; this server allows at most {self.max_tokens}", param="max_tokens"
            )
        return requested if requested is not None else self.default_max_tokens


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do (SDKs send e.g. `user`); fields we cannot
    # honour (tools, logprobs, n>1) are declared and refused with a 400 that says so.
    model_config = ConfigDict(extra="ignore")


# ---- chat completions ------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_template_message(self) -> dict[str, str]:
        # `developer` is OpenAI's newer name for `system`; chat templates know only `system`.
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None
    # RAG extras (`model: "rag"`), sent by OpenAI clients through `extra_body`
    top_k: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    mode: Mode | None = None
    """`model: "rag"` only: the search mode (see SearchRequest.mode)."""
    min_score: float | None = None
    """`model: "rag"` only: see RagRequest.min_score."""
    rerank: bool | None = None
    """`model: "rag"` only: see SearchRequest.rerank."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.n != 1:
            raise ValueError("n must be 1: this server returns one choice per request (send n requests instead)")
        if self.tools:
            raise ValueError("tools are not supported by this server's chat model")
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_sampling(self, limits: SamplingLimits) -> SamplingParams:
        """The engine's sampling parameters, within the server's limits.

        Raises:
            InvalidRequest: max_tokens (or max_completion_tokens) over the server's cap.
        """
        return SamplingParams(
            max_tokens=limits.max_new_tokens(self.requested_max_tokens()),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),  # type: ignore[arg-type]
            seed=self.seed,
        )

    def template_messages(self) -> list[dict[str, str]]:
        return [m.as_template_message() for m in self.messages]

    def last_user_text(self) -> str | None:
        users = [m for m in self.messages if m.role == "user"]
        return users[-1].text() if users else None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


class SearchResult(BaseModel):
    id: str
    text: str
    score: float
    source: str | None
    metadata: dict[str, Any]

    @classmethod
    def of(cls, hit: SearchHit) -> SearchResult:
        return cls(id=hit.id, text=hit.text, score=hit.score, source=hit.source, metadata=hit.metadata)


class RagSource(BaseModel):
    """A numbered source of a RAG answer: one chunk, or neighbouring chunks of one document merged."""

    number: int
    """What the answer cites it as: `[number]`."""
    id: str
    """Its first chunk's id."""
    chunk_ids: list[str]
    text: str
    score: float
    source: str | None
    """The document's path relative to the corpus folder."""
    document: str | None
    """The document's id."""
    title: str | None
    heading: str | None
    metadata: dict[str, Any]

    @classmethod
    def of(cls, src: Source) -> RagSource:
        m = src.metadata

        def text_or_none(key: str) -> str | None:
            return None if m.get(key) is None else str(m[key])

        return cls(
            number=src.number,
            id=src.chunk_ids[0],
            chunk_ids=src.chunk_ids,
            text=src.text,
            score=src.score,
            source=text_or_none("source"),
            document=text_or_none("doc_id"),
            title=text_or_none("title"),
            heading=text_or_none("heading"),
            metadata=dict(m),
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    sources: list[RagSource] | None = None
    """RAG only: the numbered sources the answer was generated from."""
    citations: list[int] | None = None
    """RAG only: the source numbers the answer cites, in order of first citation."""
    abstained: bool | None = None
    """RAG only: retrieval found nothing relevant enough, so the answer says so instead of guessing."""

    @classmethod
    def of(cls, model: str, result: Completion) -> ChatCompletion:
        return cls(
            id=new_id("chatcmpl"),
            created=int(time.time()),
            model=model,
            choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=usage(result.prompt_tokens, result.completion_tokens),
        )


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    sources: list[RagSource] | None = None
    """RAG only, on the first chunk."""
    citations: list[int] | None = None
    """RAG only, on the chunk that carries the finish reason."""
    abstained: bool | None = None


# ---- embeddings ------------------------------------------------------------------------------------


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("input")
    @classmethod
    def _texts_only(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not isinstance(v[0], str):
            raise ValueError(
                "token-id input is not supported (ids from another tokenizer mean nothing to this model): send "
                "strings; with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False"
            )
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)  # type: ignore[arg-type]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def of(cls, model: str, vectors: np.ndarray, fmt: str, prompt_tokens: int) -> EmbeddingResponse:
        vectors = np.asarray(vectors, dtype=np.float32)  # (n, dim); base64 is of little-endian float32, as OpenAI's
        data = [
            Embedding(
                index=i,
                embedding=base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist(),
            )
            for i, v in enumerate(vectors)
        ]
        return cls(
            data=data, model=model, usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
        )


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


# ---- search and RAG --------------------------------------------------------------------------------


class SearchRequest(_Request):
    query: str = Field(min_length=1)
    top_k: int = Field(default=5, ge=1)
    filter: dict[str, Any] | None = None
    mode: Mode | None = None
    """`dense`, `lexical` or `hybrid`; omitted: the mode the pipeline measured best (the `retrieval` unit's)."""
    rerank: bool | None = None
    """Rescore with the reranker; omitted: when the served `retrieval` unit names one."""


class SearchResponse(BaseModel):
    results: list[SearchResult]
    model: str
    mode: Mode
    reranked: bool


class RerankRequest(_Request):
    """Cohere's shape, as vLLM serves it (`query`, `documents`, `top_n`); TEI's `texts` is accepted for `documents`."""

    model: str = "reranker"
    query: str = Field(min_length=1)
    documents: list[str] | None = None
    texts: list[str] | None = None
    top_n: int | None = Field(default=None, ge=0)
    """How many results, best first; None or 0: all."""
    return_documents: bool = True

    def docs(self) -> list[str]:
        """The documents to score, from `documents` or `texts`.

        Raises:
            InvalidRequest: neither or both given.
        """
        if (self.documents is None) == (self.texts is None):
            raise InvalidRequest(
                "give the passages to rerank in `documents` (or TEI's `texts`), once", param="documents"
            )
        return list(self.documents if self.documents is not None else self.texts or [])


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    """The document's position in the request."""
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class RagRequest(_Request):
    question: str = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    mode: Mode | None = None
    min_score: float | None = None
    """Answer only when the best hit scores at least this (the reranker's relevance, else dense cosine); omitted:
    the registered threshold measured on held-out questions (/v1/status `abstain_below`)."""
    rerank: bool | None = None
    """See SearchRequest.rerank."""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stream: bool = False

    def to_sampling(self, limits: SamplingLimits) -> SamplingParams:
        """The engine's sampling parameters, within the server's limits.

        Raises:
            InvalidRequest: max_tokens over the server's cap.
        """
        return SamplingParams(max_tokens=limits.max_new_tokens(self.max_tokens), temperature=self.temperature)


class RagResponse(BaseModel):
    answer: str
    sources: list[RagSource]
    citations: list[int]
    """The source numbers the answer cites (citations of sources not given are removed from `answer`)."""
    abstained: bool
    """True when retrieval scored below the registered threshold: `answer` says nothing relevant was found."""
    usage: Usage
    finish_reason: Literal["stop", "length"]
    model: str


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


class ServedVersion(BaseModel):
    name: str
    alias: str
    version: str
    from_cache_only: bool
    """True when the registry was unreachable at start-up and the local cache supplied the version."""

    @classmethod
    def of(cls, info: Any) -> ServedVersion:
        return cls(name=info.name, alias=info.alias, version=info.version, from_cache_only=info.from_cache_only)


class StatusResponse(BaseModel):
    ready: bool
    reason: str | None = None
    """Why the server is not ready (None when ready)."""
    engines: dict[str, EngineStatus]
    models: dict[str, ServedVersion]
    index: str
    """The Chroma collection queries run against."""
    search_mode: Mode
    """What search and RAG use when a request names no `mode` (the served `retrieval` version's)."""
    reranker: bool
    """Whether search and RAG rescore with a reranker by default (and /v1/rerank is served)."""
    abstain_below: float | None
    """RAG says it found nothing relevant when the best hit's score is below this (None: it always answers)."""
    abstain_score: str | None
    """Which score that is: `reranker` or `dense` (cosine)."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
