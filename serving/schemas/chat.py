"""/v1/chat/completions: the OpenAI chat request, completion and stream chunks (with RAG's extras)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from core.retrieval_params import Mode
from serving.engines.types import Completion, SamplingParams
from serving.schemas.base import SamplingLimits, Usage, _Request, new_id, usage
from serving.schemas.retrieval import RagSource

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
