"""A chat request as an upstream provider takes it: OpenAI's chat completions body, or Anthropic's Messages body.

Both of our dialects arrive as one `ChatCompletionRequest` (Anthropic's through `MessagesRequest.to_chat_request`),
so these two functions are the whole request-side conversion; serving/handlers/upstream.py reads the answers.
Only the fields the client set are sent: an upstream applies its own defaults to the rest, as it would for the
client directly.

OpenAI's dialect carries every field we accept. Anthropic's lacks some; a request that needs them gets a 400
naming the field rather than a silently different answer:

    n > 1, logprobs, presence/frequency_penalty      -> 400 (Anthropic has no such thing)
    temperature above 1                              -> 400 (Anthropic's range is 0-1)
    seed                                             -> dropped (Anthropic samples without one; not reproducible)
    an Anthropic client's top_k                      -> top_k (to an OpenAI upstream: dropped, OpenAI has none)
    system and developer messages                    -> `system`
    assistant tool_calls / tool messages             -> tool_use blocks / tool_result blocks in a user turn
    tool_choice auto / required / named / none       -> auto / any / tool / none (parallel_tool_calls false ->
                                                        disable_parallel_tool_use)
    response_format json_schema (json_object)        -> output_config.format with the schema ({"type": "object"})
    max_tokens absent                                -> `serving.chat_default_max_tokens` (Anthropic requires it)
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import InvalidRequest
from serving.schemas.chat import ChatCompletionRequest

OPENAI_FIELDS = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n", "response_format",
    "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "tools", "tool_choice",
    "parallel_tool_calls",
)  # fmt: skip
RAG_FIELDS = ("top_k", "filter", "mode", "min_score", "rerank")


def _check_no_rag_fields(req: ChatCompletionRequest) -> None:
    for name in RAG_FIELDS:
        if getattr(req, name) is not None:
            raise InvalidRequest(f"`{name}` is for model `rag`, not the upstream model `{req.model}`", param=name)


def openai_payload(req: ChatCompletionRequest, model: str) -> dict[str, Any]:
    """The body for an OpenAI-compatible upstream (`stream` and `stream_options` are the caller's).

    Raises:
        InvalidRequest: a RAG-only field was set.
    """
    _check_no_rag_fields(req)
    body = req.model_dump(include=set(OPENAI_FIELDS) & req.model_fields_set, exclude_none=True, by_alias=True)
    body["model"] = model
    body["messages"] = [m.model_dump(exclude_none=True) for m in req.messages]
    return body


def anthropic_payload(req: ChatCompletionRequest, model: str, default_max_tokens: int) -> dict[str, Any]:
    """The body for an Anthropic upstream (`stream` is the caller's).

    Raises:
        InvalidRequest: a field Anthropic's API has no counterpart for (see the module's table), a RAG-only
            field, or tool-call arguments that are not a JSON object.
    """
    _check_no_rag_fields(req)
    missing = {
        "n": req.n != 1,
        "logprobs": req.logprobs,
        "presence_penalty": req.presence_penalty != 0,
        "frequency_penalty": req.frequency_penalty != 0,
    }
    for name, used in missing.items():
        if used:
            raise InvalidRequest(
                f"`{name}` cannot be passed on: `{req.model}` is served by an Anthropic upstream, whose API has none",
                param=name,
            )
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.requested_max_tokens() or default_max_tokens,
        "messages": _anthropic_messages(req),
    }
    system = "\n\n".join(m.text() for m in req.messages if m.role in ("system", "developer"))
    if system:
        body["system"] = system
    if "temperature" in req.model_fields_set:
        if req.temperature > 1:
            raise InvalidRequest(
                f"temperature {req.temperature} is over 1, the most an Anthropic upstream (`{req.model}`) takes",
                param="temperature",
            )
        body["temperature"] = req.temperature
    if "top_p" in req.model_fields_set:
        body["top_p"] = req.top_p
    if req._sample_top_k:  # an Anthropic client's top_k
        body["top_k"] = req._sample_top_k
    if req.stop:
        body["stop_sequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.tools:
        body["tools"] = [
            {"name": t.function.name, "input_schema": t.function.parameters or {"type": "object"},
             **({"description": t.function.description} if t.function.description else {})}
            for t in req.tools
        ]  # fmt: skip
        choice = req.tool_choice_in_effect()
        out: dict[str, Any] = (
            {"type": choice} if choice in ("auto", "none") else
            {"type": "any"} if choice == "required" else {"type": "tool", "name": choice}
        )  # fmt: skip
        if not req.parallel_tool_calls and choice != "none":
            out["disable_parallel_tool_use"] = True
        body["tool_choice"] = out
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.json_schema.schema_ if fmt.json_schema and fmt.json_schema.schema_ else {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return body


def _anthropic_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation as alternating user/assistant turns of content blocks (consecutive turns of one role
    merge: Anthropic requires alternation, and a run of tool results is one user turn)."""
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})

    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            continue
        if m.role == "user":
            add("user", [{"type": "text", "text": m.text()}])
        elif m.role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text()}])
        else:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.text()}] if m.text() else []
            for c in m.tool_calls or []:
                try:
                    args = json.loads(c.function.arguments)
                except ValueError:
                    args = None
                if not isinstance(args, dict):
                    raise InvalidRequest(
                        f"messages[{i}] calls `{c.function.name}` with arguments that are not a JSON object",
                        param=f"messages.{i}.tool_calls",
                    )
                blocks.append({"type": "tool_use", "id": c.id, "name": c.function.name, "input": args})
            add("assistant", blocks)
    return out
