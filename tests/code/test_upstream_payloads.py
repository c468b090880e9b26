"""Upstream providers without a server: the request in each upstream dialect (serving/schemas/upstream.py), the
settings that name them and their keys, and how their refusals and failures reach the client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ConfigError, load_params
from core.errors import InvalidRequest, UpstreamRejected, UpstreamUnavailable
from serving.errors import to_anthropic_error, to_openai_error
from serving.schemas.anthropic import MessagesRequest
from serving.schemas.chat import ChatCompletionRequest
from serving.schemas.upstream import anthropic_payload, openai_payload
from serving.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Rain in Oslo and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]},
    {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    {"role": "tool", "tool_call_id": "c2", "content": "sun"},
]  # fmt: skip


def _req(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "gpt", "messages": HISTORY, **extra})


def test_openai_upstream_gets_only_what_the_client_set_under_its_own_model_name() -> None:
    body = openai_payload(_req(tools=[TOOL], temperature=0.2, n=2), "gpt-4o-mini")
    assert body["model"] == "gpt-4o-mini" and body["n"] == 2 and body["temperature"] == 0.2
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["messages"][2]["tool_calls"][1]["id"] == "c2" and "content" not in body["messages"][2]
    assert not {"top_p", "presence_penalty", "logprobs", "stream", "top_k"} & set(body)  # defaults left upstream's


def test_anthropic_upstream_gets_alternating_turns_with_tool_blocks() -> None:
    body = anthropic_payload(_req(tools=[TOOL], tool_choice="required", parallel_tool_calls=False, stop="END"),
                             "claude-x", 64)  # fmt: skip
    assert body["model"] == "claude-x" and body["max_tokens"] == 64 and body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    uses = body["messages"][1]["content"]
    assert [(b["type"], b["id"], b["input"]) for b in uses] == [
        ("tool_use", "c1", {"city": "Oslo"}), ("tool_use", "c2", {"city": "Rome"}),
    ]  # fmt: skip
    results = body["messages"][2]["content"]
    assert [(b["tool_use_id"], b["content"]) for b in results] == [("c1", "rain"), ("c2", "sun")]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    assert body["stop_sequences"] == ["END"] and "temperature" not in body


def test_anthropic_upstream_structured_output_and_named_tool() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    body = anthropic_payload(_req(response_format=fmt, max_tokens=9, temperature=0.5), "c", 64)
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert body["max_tokens"] == 9 and body["temperature"] == 0.5
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert anthropic_payload(_req(tools=[TOOL], tool_choice=named), "c", 8)["tool_choice"] == {
        "type": "tool", "name": "get_weather",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"presence_penalty": 1.0}, "presence_penalty"),
     ({"temperature": 1.5}, "temperature"), ({"top_k": 3}, "top_k")],
)  # fmt: skip
def test_what_anthropic_cannot_carry_is_a_400_naming_it(extra: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_payload(_req(**extra), "c", 8)
    assert caught.value.param == param


def test_a_messages_request_for_an_upstream_leaves_sampling_unset() -> None:
    req = MessagesRequest.model_validate(
        {"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert "temperature" not in openai_payload(req.to_chat_request(None, None), "m")
    assert openai_payload(req.to_chat_request(0.0, 1.0), "m")["temperature"] == 0.0


def test_upstreams_come_from_params_or_json_and_keys_from_the_named_variable() -> None:
    p = load_params(ROOT / "params.yaml")
    ups = {"gpt": {"dialect": "openai", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini",
                   "api_key_env": "MY_OPENAI_KEY"}}  # fmt: skip
    s = load_settings(p, environ={"SERVING_UPSTREAMS": json.dumps(ups), "MY_OPENAI_KEY": "sk-secret"})
    assert s.serving.upstreams["gpt"].model == "gpt-4o-mini" and s.upstream_keys == {"gpt": "sk-secret"}
    assert "sk-secret" not in repr(s)
    with pytest.raises(ConfigError, match=r"MY_OPENAI_KEY, which is not set"):
        load_settings(p, environ={"SERVING_UPSTREAMS": json.dumps(ups)})
    with pytest.raises(ConfigError, match="not a JSON object"):
        load_settings(p, environ={"SERVING_UPSTREAMS": "{gpt:"})
    with pytest.raises(ConfigError, match="own model names: chat"):
        load_settings(p, environ={"SERVING_UPSTREAMS": json.dumps({"chat": ups["gpt"]})})


def test_upstream_refusals_keep_their_status_and_failures_are_502() -> None:
    refused = UpstreamRejected("upstream `gpt` refused: bad key", status=401, type=None)
    assert to_openai_error(refused).status == 401
    assert to_openai_error(refused).body["error"]["type"] == "authentication_error"
    assert to_anthropic_error(refused).body["error"]["type"] == "authentication_error"
    down = to_openai_error(UpstreamUnavailable("upstream `gpt` is unavailable"))
    assert down.status == 502 and down.body["error"]["code"] == "upstream_unavailable"
    assert to_anthropic_error(UpstreamUnavailable("x")).body["error"]["type"] == "api_error"
