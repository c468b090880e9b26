"""The RAG prompt: one definition shared by the chat training data, evaluation and serving.

The chat model is fine-tuned on exactly the prompt the RAG endpoint sends, so what it learns
(answer from the given passages, cite them as `[1]`, say when none answers) is what it is asked to do in
production; core/citations.py parses those citations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

SYSTEM_PROMPT = (
    "You answer questions about the documentation using only the numbered context passages given. "
    "Quote or paraphrase the relevant passage and cite it by its number, like [1]. "
    "If the context does not contain the answer, say so."
)

NOT_IN_CONTEXT = "The context does not answer this question."
"""The answer to a question none of the passages answers: the fine-tuning data teaches this exact sentence
(data/grounded.py) for the system prompt's "say so", and evaluation counts it as declining to answer."""


def format_context(passages: Sequence[str]) -> str:
    return "\n\n".join(f"[{i + 1}] {p.strip()}" for i, p in enumerate(passages))


def rag_messages(question: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking `question` over the numbered `passages`."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Context:\n{format_context(passages)}\n\nQuestion: {question}"},
    ]


# ---- tool calling (core/tool_calls.py has the format; the chat fine-tuning data teaches it) ----------------

TOOL_SYSTEM_PROMPT = (
    "You answer questions about the documentation. Call a tool when you need information you were not given; "
    "answer from a tool's result, citing its numbered passages like [1]."
)
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the documentation",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
OTHER_TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Do arithmetic",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
)
"""Offered beside `search_docs` in the tool examples, so the model learns to pick a tool by what it does."""

ExampleFormat = Literal["rag", "tool_call", "tool_answer"]
"""How a chat example is shown (data/grounded.py assigns one per training example):

    rag          the RAG prompt: the passages in the user turn, the cited answer (`rag_messages`)
    tool_call    the question with tools offered and no passages: the answer is a `search_docs` call
    tool_answer  the same, after that call and its result (the numbered passages): the cited answer
"""


def search_call(question: str) -> dict[str, Any]:
    """The call a `tool_call` example teaches: `search_docs` with the question as the query."""
    return {"name": SEARCH_TOOL["function"]["name"], "arguments": {"query": question}}


def example_prompt(
    fmt: ExampleFormat, question: str, passages: Sequence[str], other_tool: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and the tools offered: None for `rag` and `tool_answer`) that a chat example of format `fmt`
    is answered after.

    Args:
        other_tool: which of `OTHER_TOOLS` is offered beside `search_docs` (the list order varies with it too).
    """
    if fmt == "rag":
        return list(rag_messages(question, passages)), None
    other = OTHER_TOOLS[other_tool % len(OTHER_TOOLS)]
    tools: list[dict[str, Any]] | None = (
        [SEARCH_TOOL, other] if (other_tool // len(OTHER_TOOLS)) % 2 == 0 else [other, SEARCH_TOOL]
    )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": TOOL_SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    if fmt == "tool_answer":
        # without the tool list: the passages need the room (train_chat.max_length), and what is learnt here is
        # answering from a tool's result, which the list does not change
        tools = None
        call = search_call(question)
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_0", "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}},
            ]},
            {"role": "tool", "tool_call_id": "call_0", "content": format_context(passages)},
        ]  # fmt: skip
    return messages, tools
