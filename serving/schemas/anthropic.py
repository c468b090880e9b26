"""/v1/messages: Anthropic's Messages API request and response shapes, and their conversion to and from ours.

One engine path: a Messages request becomes the same `ChatCompletionRequest` the OpenAI route builds
(`to_chat_request`), so sampling, tools, structured output, RAG and every check are shared; only the wire
shapes differ. Conversions:

    system (text or text blocks)          -> a system message
    user text / tool_result blocks        -> user messages / `tool` messages (in block order)
    assistant text / tool_use blocks      -> an assistant message with `tool_calls`
    tools[{name, description, input_schema}] -> OpenAI function tools
    tool_choice auto / any / tool / none  -> auto / required / the named tool / none
                                             (`disable_parallel_tool_use` -> parallel_tool_calls false)
    output_config.format (json_schema)    -> response_format json_schema
    stop_sequences, top_k                 -> stop, top-k sampling

Today's `anthropic` SDK no longer sends sampling parameters; older clients send `temperature`, `top_p` and
`top_k`, so they are applied when present (defaults: `serving.messages_temperature` and `messages_top_p`;
no top-k).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest
from serving.schemas.base import _Request, new_id
from serving.schemas.chat import ChatCompletionRequest

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="ignore")  # cache_control, citations sent back: accepted, unused
    type: Literal["text"]
    text: str


class ToolUseBlock(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False

    def text(self) -> str:
        body = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        return f"Error: {body}" if self.is_error else body


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]
"""What a message may hold here; other block types (image, document) get a 400 naming them."""


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(BaseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class OutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: OutputFormat | None = None


class MessagesRequest(_Request):
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    """None: `serving.messages_temperature`."""
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    # RAG extras (`model: "rag"`), as on the OpenAI route
    filter: dict[str, Any] | None = None
    min_score: float | None = None

    def to_chat_request(self, temperature: float | None = 1.0, top_p: float | None = 1.0) -> ChatCompletionRequest:
        """The same request in the OpenAI dialect (validated as the OpenAI route validates it).

        Args:
            temperature, top_p: what applies when the request sends none (`serving.messages_*`); None leaves
                them unset, as the client did (an upstream model then applies its own defaults).

        Raises:
            InvalidRequest: a `tool` choice without a name, or a tool_result that answers no tool_use.
        """
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system)
            messages.append({"role": "system", "content": system})
        for m in self.messages:
            messages += _openai_messages(m)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "stop": self.stop_sequences or None,
            "stream": self.stream,
            "filter": self.filter,
            "min_score": self.min_score,
        }
        for key, given, default in (("temperature", self.temperature, temperature), ("top_p", self.top_p, top_p)):
            if given is not None or default is not None:
                body[key] = default if given is None else given
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.input_schema}}
                for t in self.tools
            ]  # fmt: skip
        if self.tool_choice is not None:
            body["tool_choice"] = _choice(self.tool_choice)
            body["parallel_tool_calls"] = not self.tool_choice.disable_parallel_tool_use
        if self.output_config and self.output_config.format:
            schema = self.output_config.format.schema_
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        out = ChatCompletionRequest.model_validate(body)
        out._sample_top_k = self.top_k or 0
        return out


def _choice(c: ToolChoice) -> str | dict[str, Any]:
    if c.type == "tool":
        if not c.name:
            raise InvalidRequest("tool_choice of type `tool` needs the tool's `name`", param="tool_choice.name")
        return {"type": "function", "function": {"name": c.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[c.type]


def _openai_messages(m: Message) -> list[dict[str, Any]]:
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    out: list[dict[str, Any]] = []
    if m.role == "assistant":
        text = "".join(b.text for b in m.content if isinstance(b, TextBlock))
        calls = [
            {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
            for b in m.content
            if isinstance(b, ToolUseBlock)
        ]
        return [{"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}]
    for b in m.content:
        if isinstance(b, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text()})
        elif isinstance(b, TextBlock):
            if out and out[-1]["role"] == "user":
                out[-1]["content"] += b.text
            else:
                out.append({"role": "user", "content": b.text})
        else:
            raise InvalidRequest("a user message cannot hold a tool_use block", param="messages")
    return out


# ---- responses ------------------------------------------------------------------------------------


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class CitedSource(BaseModel):
    """A RAG citation in Anthropic's `char_location` form: where the cited source lies in its document."""

    type: Literal["char_location"] = "char_location"
    cited_text: str
    document_index: int
    document_title: str | None
    start_char_index: int
    end_char_index: int


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str
    citations: list[CitedSource] | None = None


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage

    def as_json(self) -> dict[str, Any]:
        """Anthropic writes `stop_reason` and `stop_sequence` even when null."""
        out = self.model_dump(exclude_none=True)
        out["stop_reason"], out["stop_sequence"] = self.stop_reason, self.stop_sequence
        return out


class CountTokensRequest(_Request):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None

    def as_messages_request(self) -> MessagesRequest:
        return MessagesRequest(model=self.model, max_tokens=1, messages=self.messages, system=self.system,
                               tools=self.tools)  # fmt: skip


def message_id() -> str:
    return new_id("msg")


def stop_reason(finish: str | None, stop_sequence: str | None, called: bool) -> StopReason:
    """OpenAI's finish reason as Anthropic's stop reason: `max_tokens` first (also after calls: the last one may be
    cut short, as Anthropic's API says), then `tool_use` when the answer called."""
    if finish == "length":
        return "max_tokens"
    if called:
        return "tool_use"
    return "stop_sequence" if stop_sequence else "end_turn"
