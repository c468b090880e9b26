"""/v1/completions (OpenAI's legacy text completions) and /v1/tokenize, /v1/detokenize (vLLM's shapes).

A completion continues the prompt as it is (no chat template): the raw model, as llama.cpp's and vLLM's
`/v1/completions` serve it. `logprobs` here is the legacy integer (how many alternatives per token, 0-5
in OpenAI's API; up to 20 here, as for chat), reported in the legacy shape (`tokens`, `token_logprobs`,
`top_logprobs` as {token: logprob}, `text_offset`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from serving.engines.types import SamplingParams, TokenLogprob
from serving.schemas.base import SamplingLimits, SpecModel, Usage, _Request, new_id, stop_strings


class CompletionRequest(_Request):
    model: str
    prompt: str | list[int] = Field(min_length=1)
    """One prompt: text, or token ids."""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    """vLLM's extension: keep generating past the end-of-sequence token, to exactly max_tokens (benchmarks)."""
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream_options: dict[str, Any] | None = None
    suffix: None = None
    """Insertion (fill in the middle) is not supported by these models: a suffix gets a 400."""

    _stops = field_validator("stop")(stop_strings)

    def to_sampling(self, limits: SamplingLimits) -> SamplingParams:
        return SamplingParams(
            max_tokens=limits.max_new_tokens(self.max_tokens if self.max_tokens is not None else 16),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),  # type: ignore[arg-type]
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.logprobs,
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]

    @classmethod
    def of(cls, tokens: Sequence[TokenLogprob], offset: int = 0) -> LegacyLogprobs:
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t.token)
        return cls(
            tokens=[t.token for t in tokens],
            token_logprobs=[t.logprob for t in tokens],
            top_logprobs=[{x.token: x.logprob for x in t.top} for t in tokens],
            text_offset=offsets,
        )


class CompletionChoice(SpecModel):
    nullable = ("logprobs", "finish_reason")
    text: str
    index: int = 0
    logprobs: LegacyLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    @classmethod
    def new(cls, model: str, choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionResponse:
        return cls(id=new_id("cmpl"), model=model, choices=choices, usage=usage)


class TokenizeRequest(_Request):
    """vLLM's /tokenize: a text prompt, or chat messages rendered with the chat template."""

    model: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(_Request):
    model: str
    tokens: list[int] = Field(min_length=1)


class DetokenizeResponse(BaseModel):
    prompt: str
