"""/v1/chat/completions: the OpenAI chat request, completion and stream chunks (with RAG's extras)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from core.errors import InvalidRequest
from core.retrieval_params import Mode
from core.tool_calls import ToolChoice
from serving.engines.types import Completion, Constraint, SamplingParams, TokenLogprob
from serving.schemas.base import SamplingLimits, SpecModel, Usage, _Request, new_id, stop_strings, usage
from serving.schemas.retrieval import RagSource
from serving.schemas.tools import (
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    resolve_choice,
    template_tools,
    tool_constraint,
)

# ---- chat completions ------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    """Absent or null only on an assistant message that carries `tool_calls`."""
    tool_calls: list[ToolCall] | None = None
    """An assistant's calls, sent back in the history."""
    tool_call_id: str | None = None
    """A `tool` message: the call it answers."""
    name: str | None = None

    @model_validator(mode="after")
    def _content_given(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a `{self.role}` message needs `content`")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a `tool` message needs the `tool_call_id` of the call it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_template_message(self) -> dict[str, Any]:
        # `developer` is OpenAI's newer name for `system`; chat templates know only `system`.
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`, as OpenAI takes it."""

    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """The JSON schema the answer must validate against; absent: any JSON object."""
    strict: bool | None = None
    """Accepted for compatibility: every schema is enforced by constrained decoding, strict or not."""


class ResponseFormat(BaseModel):
    """What the answer's text must be: free `text`, any JSON object, or JSON valid against a schema.

    JSON answers are guaranteed by constrained decoding (serving/engines/generation/grammar.py): the
    answer parses and validates, unless it ends with `finish_reason: "length"` (max_tokens came first).
    """

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a `json_schema` object with the `schema`")
        return self

    def constraint(self) -> Constraint | None:
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema is None or self.json_schema.schema_ is None:
            return Constraint("json_object")
        return Constraint("json_schema", json.dumps(self.json_schema.schema_))


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    """vLLM's extension: keep generating past the end-of-sequence token, to exactly max_tokens (benchmarks)."""
    n: int = Field(default=1, ge=1, le=8)
    """Choices to generate; they share one prefill (at most 8: each takes a decode slot)."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # RAG extras (`model: "rag"`), sent by OpenAI clients through `extra_body`
    top_k: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    mode: Mode | None = None
    """`model: "rag"` only: the search mode (see SearchRequest.mode)."""
    min_score: float | None = None
    """`model: "rag"` only: see RagRequest.min_score."""
    rerank: bool | None = None
    """`model: "rag"` only: see SearchRequest.rerank."""

    _stops = field_validator("stop")(stop_strings)
    _sample_top_k: int = PrivateAttr(default=0)
    """Top-k sampling, set only by Anthropic's route (`top_k` here is RAG's passage count, sent by OpenAI clients)."""

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
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
            top_k=self._sample_top_k,
            stop=tuple(self.stop or ()),  # type: ignore[arg-type]
            seed=self.seed,
            constraint=self.constraint(),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            ignore_eos=self.ignore_eos,
        )

    def tool_choice_in_effect(self) -> ToolChoice:
        """`none`, `auto`, `required` or a tool's name (see `resolve_choice`)."""
        return resolve_choice(self.tools, self.tool_choice)

    def constraint(self) -> Constraint | None:
        """What the answer must match: the tool-call format, a response format, or nothing.

        Raises:
            InvalidRequest: a tool or tool_choice that cannot be used, both tools and a JSON response format,
                or a `tool` message that answers no call.
        """
        self._check_tool_messages()
        choice = self.tool_choice_in_effect()
        fmt = self.response_format.constraint() if self.response_format else None
        if choice == "none" or not self.tools:
            return fmt
        if fmt is not None:
            raise InvalidRequest(
                "a JSON response_format and tools cannot both constrain one answer: send tool_choice `none`, "
                "or drop response_format", param="response_format",
            )  # fmt: skip
        return tool_constraint(self.tools, choice, self.parallel_tool_calls)

    def _check_tool_messages(self) -> None:
        calls: set[str] = set()
        for i, m in enumerate(self.messages):
            calls.update(c.id for c in m.tool_calls or [])
            if m.role == "tool" and m.tool_call_id not in calls:
                raise InvalidRequest(
                    f"messages[{i}] answers tool call `{m.tool_call_id}`, which no earlier assistant message made",
                    param=f"messages.{i}.tool_call_id",
                )

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template lists them; None when the answer may not call them."""
        return template_tools(self.tools) if self.tool_choice_in_effect() != "none" else None

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.as_template_message() for m in self.messages]

    def last_user_text(self) -> str | None:
        users = [m for m in self.messages if m.role == "user"]
        return users[-1].text() if users else None


class AssistantMessage(SpecModel):
    nullable = ("content", "refusal")
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    """OpenAI's field for a model's refusal; our models never refuse, so always null (the spec requires it)."""
    tool_calls: list[ToolCall] | None = None


class TopLogprob(SpecModel):
    nullable = ("bytes",)
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(SpecModel):
    nullable = ("content", "refusal")
    content: list[TokenLogprobOut] | None
    refusal: None = None

    @classmethod
    def of(cls, tokens: Sequence[TokenLogprob]) -> ChoiceLogprobs:
        def top(t: TokenLogprob) -> TopLogprob:
            return TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes)

        return cls(content=[TokenLogprobOut(token=t.token, logprob=t.logprob, bytes=t.bytes,
                                            top_logprobs=[top(x) for x in t.top]) for t in tokens])  # fmt: skip


class Choice(SpecModel):
    nullable = ("logprobs",)
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


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
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(SpecModel):
    nullable = ("finish_reason",)  # null on every chunk but the last: the spec requires the key
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(SpecModel):
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


class ChatCompletionChunkWithUsage(ChatCompletionChunk):
    """A chunk of a stream that asked for usage (`stream_options.include_usage`): OpenAI writes `usage: null` on
    every chunk but the last, which carries the usage and no choices."""

    nullable = ("usage",)
