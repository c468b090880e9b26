"""The wire format: OpenAI-compatible pydantic schemas for every route, plus /v1/search and /v1/rag.

Requests validate themselves (field constraints, `model_validator`) and convert themselves into the
engines' plain types (`to_sampling`); responses are built from the engines' results. Nothing here
runs a model or knows about BentoML.

One module per endpoint family (base, chat, embeddings, retrieval, status), all re-exported here:
`from serving.schemas import X` is the way in.
"""

from __future__ import annotations

from serving.schemas.base import (
    SamplingLimits,
    Usage,
    _Request,
    new_id,
    usage,
)
from serving.schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkWithUsage,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    JsonSchemaFormat,
    ResponseFormat,
    StreamOptions,
    TextPart,
)
from serving.schemas.embeddings import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from serving.schemas.retrieval import (
    RagRequest,
    RagResponse,
    RagSource,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from serving.schemas.status import (
    EngineStatus,
    ModelCard,
    ModelList,
    ServedVersion,
    StatusResponse,
)

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionChunkWithUsage",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Delta",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "EngineStatus",
    "JsonSchemaFormat",
    "ModelCard",
    "ModelList",
    "RagRequest",
    "RagResponse",
    "RagSource",
    "RerankDocument",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "RerankUsage",
    "ResponseFormat",
    "SamplingLimits",
    "SearchRequest",
    "SearchResponse",
    "SearchResult",
    "ServedVersion",
    "StatusResponse",
    "StreamOptions",
    "TextPart",
    "Usage",
    "_Request",
    "new_id",
    "usage",
]
