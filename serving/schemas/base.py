"""What every route shares: the server's sampling limits, the request base, token usage, ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from core.errors import InvalidRequest
from core.serving_params import ServingParams


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


class SpecModel(BaseModel):
    """A response object whose `nullable` fields are written even when None.

    Responses are serialized with `exclude_none` (serving/http.py), so optional extras (RAG's `sources`, ...)
    stay out of plain answers. OpenAI's spec, though, *requires* some fields that are usually null
    (`message.refusal`, `choices[].logprobs`, a stream chunk's `finish_reason`), and clients generated from it
    reject a response without them: those are listed here and always written.
    """

    nullable: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _write_nullable(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for name in self.nullable:
            if name not in out:
                out[name] = None
        return out


def stop_strings(v: str | list[str] | None) -> list[str] | None:
    """A request's `stop` (one string or a list) as a list: at most 4, none empty (OpenAI's limits)."""
    if v is None:
        return None
    stops = [v] if isinstance(v, str) else v
    if len(stops) > 4 or any(not s for s in stops):
        raise ValueError("stop takes at most 4 non-empty strings")
    return stops


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
