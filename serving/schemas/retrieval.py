"""/v1/search, /v1/rerank and /v1/rag: requests, results, numbered sources and cited answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.context import Source
from core.errors import InvalidRequest
from core.retrieval_params import Mode
from serving.engines.types import SamplingParams, SearchHit
from serving.schemas.base import SamplingLimits, Usage, _Request


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
    span: tuple[int, int] | None
    """`[start, end)`: where the source's text lies in the document's text (its chunks' first start to last end)."""
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
            span=src.span,
            metadata=dict(m),
        )


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
    ignore_eos: bool = False
    """vLLM's extension: keep generating past the end-of-sequence token, to exactly max_tokens (benchmarks)."""
    stream: bool = False

    def to_sampling(self, limits: SamplingLimits) -> SamplingParams:
        """The engine's sampling parameters, within the server's limits.

        Raises:
            InvalidRequest: max_tokens over the server's cap.
        """
        return SamplingParams(
            max_tokens=limits.max_new_tokens(self.max_tokens), temperature=self.temperature, ignore_eos=self.ignore_eos
        )


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
