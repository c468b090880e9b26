"""/v1/embeddings: the OpenAI embeddings request and response."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from serving.schemas.base import _Request

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
