"""The tool-call format: how tools reach the prompt, the grammar a call must match, and how calls are read back.

SmolLM2's chat template has no tool format, so the project ships one (core/chat_template.jinja: ChatML as
SmolLM2 renders it, plus tools in the Hermes/Qwen convention). A call is

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and parallel calls are joined by a newline. The same format is taught by the chat fine-tuning data,
rendered by the template for calls in the history, forced by the grammar (`tool_grammar`) when a request
says `required` or names a tool, and, for `auto`, allowed as one branch of a grammar whose other branch is
free text: the model may answer or call, and whichever it does is whole, so `parse` reads a string the
grammar already accepted and never guesses at half a call.

The grammar is Lark with llguidance's `%json` (a JSON schema as a rule), compiled by
serving/engines/generation/grammar.py. Each call is one JSON object whose `name` is one of the offered
tools (a `const`) and whose `arguments` validate against that tool's `parameters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from core.json_schemas import JSON_STYLE, close_objects

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
SEPARATOR = "\n"
TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")

ToolChoice = Literal["none", "auto", "required"] | str
"""`none`, `auto`, `required`, or the name of the one tool that must be called."""


@cache
def chat_template() -> str:
    """The project's chat template (Jinja), for tokenizers whose own template has no tools."""
    return TEMPLATE_FILE.read_text()


def template_for(own: str | None) -> str | None:
    """The template to render a conversation with tools: the model's own if it knows tools, else ours."""
    return None if own and "tools" in own else chat_template()


@dataclass(frozen=True)
class Function:
    """A tool the request offers: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Call:
    """A call read back from the model's output; `arguments` is the JSON text (as OpenAI returns it)."""

    name: str
    arguments: str


def call_schema(functions: list[Function]) -> dict[str, Any]:
    """The JSON schema of one call to any of `functions`."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": close_objects(f.parameters or {"type": "object"})},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_grammar(functions: list[Function], choice: ToolChoice, parallel: bool) -> str | None:
    """The Lark grammar the answer must match, or None for free text (`none`).

    Args:
        functions: the offered tools (for a named choice, only that tool is callable).
        choice: `auto` (free text, or calls), `required` (calls), a tool's name (calls of it), `none`.
        parallel: whether an answer may hold more than one call.
    """
    if choice == "none" or not functions:
        return None
    if choice not in ("auto", "required"):
        functions = [f for f in functions if f.name == choice]
    calls = 'calls: call ("\\n" call)*' if parallel else "calls: call"
    rules = [
        calls,
        'call: "<tool_call>\\n" call_json "\\n</tool_call>"',
        f"call_json: %json {json.dumps(call_schema(functions) | {'x-guidance': JSON_STYLE})}",
    ]
    if choice == "auto":
        # free text must not begin with `<`: an answer that starts a tag is a call, and is held to it
        return "\n".join(["start: TEXT | calls", "TEXT: /[^<](.|\\n)*/", *rules])
    return "\n".join(["start: calls", *rules])


def parse(text: str) -> tuple[str | None, list[Call]]:
    """An answer the tool grammar accepted, as (content, calls): the calls when it is in the call format, else
    (text, []). An answer cut short by max_tokens keeps its complete calls; the unfinished one stays text (the
    content), never made into a call."""
    if not text.startswith(OPEN):
        return text, []
    calls: list[Call] = []
    rest = text
    while CLOSE in rest:
        block, after = rest.split(CLOSE, 1)
        block = block.lstrip("\n")
        try:
            body = json.loads(block.removeprefix(OPEN))
            call = Call(body["name"], json.dumps(body["arguments"]))
        except (ValueError, KeyError, TypeError):
            break
        if not block.startswith(OPEN):
            break
        calls.append(call)
        rest = after
    rest = rest.lstrip("\n") if calls else rest
    if not calls:
        return text, []
    return (rest or None), calls


def render_call(name: str, arguments: dict[str, Any] | str) -> str:
    """One call as the model writes it (for the fine-tuning data and tests)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f'{OPEN}{{"name": {json.dumps(name)}, "arguments": {args}}}{CLOSE}'
