"""The fields OpenAI's published OpenAPI spec requires in the chat responses we send.

Written by hand from `openai/openai-openapi` (openapi.json, info.version 2.3.0, commit f85dbe2 of
2026-08-21): the fetched spec is not committed, so each schema's `required` list is copied here, with the
schema's name. A typed client generated from the spec rejects a response that lacks one of these keys even
when its value is null, which is why `null` must be written, not left out.
"""

from __future__ import annotations

from typing import Any

SPEC = "openai-openapi 2.3.0 (f85dbe2)"

# schema name -> (where in our JSON, the required keys)
REQUIRED: dict[str, tuple[str, tuple[str, ...]]] = {
    "CreateChatCompletionResponse": ("", ("choices", "created", "id", "model", "object")),
    "CreateChatCompletionResponse.choices[]": ("choices[]", ("finish_reason", "index", "message", "logprobs")),
    "ChatCompletionResponseMessage": ("choices[].message", ("role", "content", "refusal")),
    "CompletionUsage": ("usage", ("prompt_tokens", "completion_tokens", "total_tokens")),
    "ChatCompletionMessageToolCall": ("choices[].message.tool_calls[]", ("id", "type", "function")),
    "ChatCompletionMessageToolCall.function": ("choices[].message.tool_calls[].function", ("name", "arguments")),
}
REQUIRED_CHUNK: dict[str, tuple[str, tuple[str, ...]]] = {
    "CreateChatCompletionStreamResponse": ("", ("choices", "created", "id", "model", "object")),
    "CreateChatCompletionStreamResponse.choices[]": ("choices[]", ("delta", "finish_reason", "index")),
    "CompletionUsage": ("usage", ("prompt_tokens", "completion_tokens", "total_tokens")),
    "ChatCompletionMessageToolCallChunk": ("choices[].delta.tool_calls[]", ("index",)),
}


def _at(obj: Any, path: str) -> list[Any]:
    """The objects at a dotted path, `[]` meaning every item of a list; absent optional parts yield none."""
    found = [obj]
    for part in [p for p in path.split(".") if p]:
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        nxt: list[Any] = []
        for o in found:
            v = o.get(key) if isinstance(o, dict) else None
            if v is None:
                continue
            nxt.extend(v if many else [v])
        found = nxt
    return found


def missing(body: dict[str, Any], required: dict[str, tuple[str, tuple[str, ...]]] = REQUIRED) -> list[str]:
    """`schema.key` for every required key absent from `body` (a completion, or a chunk with REQUIRED_CHUNK)."""
    out = []
    for schema, (path, keys) in required.items():
        for o in _at(body, path):
            out += [f"{schema}.{k}" for k in keys if k not in o]
    return out
