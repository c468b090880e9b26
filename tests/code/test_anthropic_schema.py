"""serving/schemas/anthropic.py and the edge's error dialects: a Messages request is the same engine request."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.errors import InvalidRequest, ModelNotFound, Overloaded, QueueFull, Unauthorized
from serving.errors import is_anthropic, to_anthropic_error, to_error
from serving.schemas.anthropic import MessagesRequest, stop_reason

USE = {"type": "tool_use", "id": "tu1", "name": "get_weather", "input": {"city": "Oslo"}}
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _req(**extra: object) -> MessagesRequest:
    return MessagesRequest.model_validate(
        {"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def test_a_conversation_with_a_tool_round_trip_becomes_the_openai_request() -> None:
    req = _req(
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        messages=[
            {"role": "user", "content": "Rain in Oslo?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, USE]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "rain"},
                                         {"type": "text", "text": "So?"}]},
        ],
        tools=[TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True}, stop_sequences=["\n\n"],
    )  # fmt: skip
    chat = req.to_chat_request(temperature=0.0)
    msgs = chat.template_messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "user"]
    assert msgs[0]["content"] == "Be brief." and msgs[3] == {"role": "tool", "content": "rain", "tool_call_id": "tu1"}
    assert json.loads(msgs[2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert chat.tool_choice_in_effect() == "required" and chat.parallel_tool_calls is False
    assert chat.temperature == 0.0 and chat.stop == ["\n\n"] and chat.max_tokens == 9
    assert chat.constraint() is not None  # the tool grammar, as on the OpenAI route


def test_tool_choice_output_config_and_sampling_defaults() -> None:
    named = _req(tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"}).to_chat_request()
    assert named.tool_choice_in_effect() == "get_weather"
    assert _req(tools=[TOOL], tool_choice={"type": "none"}).to_chat_request().tool_choice_in_effect() == "none"
    assert _req(tools=[TOOL]).to_chat_request().tool_choice_in_effect() == "auto"
    with pytest.raises(InvalidRequest, match="needs the tool's `name`"):
        _req(tools=[TOOL], tool_choice={"type": "tool"}).to_chat_request()
    fmt = _req(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}).to_chat_request()
    assert fmt.constraint() is not None and fmt.constraint().kind == "json_schema"  # type: ignore[union-attr]
    assert _req(temperature=0.3).to_chat_request(temperature=0.9).temperature == 0.3  # the request's wins
    assert _req().to_chat_request(temperature=0.9, top_p=0.5).top_p == 0.5  # else the server's default
    with pytest.raises(ValidationError):
        _req(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}])
    with pytest.raises(InvalidRequest, match="answers tool call `nope`"):
        _req(
            messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}]
        ).to_chat_request().constraint()


def test_stop_reasons() -> None:
    assert stop_reason("stop", None, called=False) == "end_turn"
    assert stop_reason("stop", "###", called=False) == "stop_sequence"
    assert stop_reason("length", None, called=False) == "max_tokens"
    assert stop_reason("stop", None, called=True) == "tool_use"
    assert stop_reason("length", None, called=True) == "max_tokens"  # the last call may be cut


def test_errors_in_each_dialect() -> None:
    assert is_anthropic("/v1/messages") and is_anthropic("/v1/messages/count_tokens")
    assert not is_anthropic("/v1/chat/completions")
    body = to_anthropic_error(InvalidRequest("bad tool", param="tools")).body
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": "tools: bad tool"}}
    assert to_anthropic_error(Unauthorized("no key")).body["error"]["type"] == "authentication_error"
    assert to_anthropic_error(ModelNotFound("x")).body["error"]["type"] == "not_found_error"
    assert to_anthropic_error(QueueFull("busy", retry_after_s=2)).headers == {"Retry-After": "2"}
    assert to_anthropic_error(Overloaded("down")).body["error"]["type"] == "overloaded_error"
    assert to_anthropic_error(RuntimeError("secret")).body["error"] == {
        "type": "api_error",
        "message": "internal server error",
    }
    assert "error" in to_error(InvalidRequest("x"), "/v1/chat/completions").body
    assert to_error(InvalidRequest("x"), "/v1/chat/completions").body["error"]["type"] == "invalid_request_error"


def test_top_k_from_older_clients_is_applied() -> None:
    from serving.schemas.base import SamplingLimits

    limits = SamplingLimits(default_max_tokens=8, max_tokens=64)
    assert _req(top_k=5, temperature=0.7).to_chat_request().to_sampling(limits).top_k == 5
    assert _req().to_chat_request().to_sampling(limits).top_k == 0
