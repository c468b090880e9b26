"""Tool calling in OpenAI's chat shapes: the tools a request offers, `tool_choice`, and the calls we answer with.

The format the model writes, the grammar that holds it to it and the parser are core/tool_calls.py; these
are the wire shapes and the checks that give a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.errors import InvalidRequest
from core.tool_calls import Call, Function, ToolChoice, tool_grammar
from serving.engines.types import Constraint
from serving.schemas.base import new_id

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """The JSON schema of the arguments; absent: any JSON object."""
    strict: bool | None = None
    """Accepted for compatibility: arguments are always held to the schema by constrained decoding."""


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    @classmethod
    def of(cls, call: Call) -> ToolCall:
        return cls(id=new_id("call"), function=FunctionCall(name=call.name, arguments=call.arguments))


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed call (`ChatCompletionMessageToolCallChunk`): the first with id, type and name, then argument
    fragments (serving/handlers/tools.py)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


def resolve_choice(
    tools: list[ToolDefinition] | None, choice: Literal["none", "auto", "required"] | NamedToolChoice | None
) -> ToolChoice:
    """The effective `tool_choice`: OpenAI's defaults (`auto` with tools, `none` without), checked.

    Raises:
        InvalidRequest: a choice that needs tools without any, or a named tool that was not given.
    """
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, NamedToolChoice):
        names = [t.function.name for t in tools or []]
        if choice.function.name not in names:
            given = ", ".join(names) or "none"
            raise InvalidRequest(
                f"tool_choice names `{choice.function.name}`, which is not among the tools given ({given})",
                param="tool_choice",
            )
        return choice.function.name
    if choice == "required" and not tools:
        raise InvalidRequest("tool_choice `required` needs at least one tool in `tools`", param="tool_choice")
    return choice


def tool_constraint(tools: list[ToolDefinition], choice: ToolChoice, parallel: bool) -> Constraint | None:
    """The grammar that holds the answer to the tool-call format (None: free text). A malformed `parameters`
    schema is refused when the engine compiles it, naming `tools` (serving/engines/generation/grammar.py).

    Raises:
        InvalidRequest: two tools share a name.
    """
    functions = [Function(t.function.name, t.function.parameters or {}) for t in tools]
    seen: set[str] = set()
    for f in functions:
        if f.name in seen:
            raise InvalidRequest(f"two tools are named `{f.name}`", param="tools")
        seen.add(f.name)
    grammar = tool_grammar(functions, choice, parallel)
    return None if grammar is None else Constraint("lark", grammar, param="tools")


def template_tools(tools: list[ToolDefinition] | None) -> list[dict[str, Any]] | None:
    """The tools as the chat template lists them (OpenAI's own JSON, which models trained on it know)."""
    return [json.loads(t.model_dump_json(exclude_none=True)) for t in tools] if tools else None
