"""Anthropic's Messages API on the same real `bentoml serve`, driven by the official `anthropic` SDK (which sends
`x-api-key`), LangChain's ChatAnthropic, and httpx for the raw event sequence."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.serving.conftest import API_KEYS, Server
from tests.serving.tools import WEATHER_ANTHROPIC as WEATHER

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "What does json.dumps do?"}]


@pytest.fixture(scope="module")
def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEYS[0], max_retries=0, timeout=120)


def test_messages_plain_and_streamed_agree(client: anthropic.Anthropic) -> None:
    messages: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello! How can I help?"}]},
        *ASK,
    ]
    out = client.messages.create(model="chat", system="Be brief.", messages=messages, max_tokens=12)
    assert out.type == "message" and out.role == "assistant" and out.stop_reason in ("end_turn", "max_tokens")
    assert out.content[0].type == "text" and out.content[0].text
    assert out.usage.input_tokens > 0 and 0 < out.usage.output_tokens <= 12
    with client.messages.stream(model="chat", system="Be brief.", messages=messages, max_tokens=12) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == out.content[0].text  # temperature defaults apply alike; greedy needs no parameter: see below
    assert final.stop_reason == out.stop_reason and final.usage.output_tokens == out.usage.output_tokens


def test_stop_sequences_say_which_one_stopped_the_answer(client: anthropic.Anthropic) -> None:
    first = client.messages.create(model="chat", messages=ASK, max_tokens=24)
    words = first.content[0].text.split()
    assert len(words) > 3, first
    stop = words[2]
    out = client.messages.create(model="chat", messages=ASK, max_tokens=24, stop_sequences=["@@never@@", stop])
    assert out.stop_reason == "stop_sequence" and out.stop_sequence == stop
    assert stop not in out.content[0].text


def test_the_raw_event_sequence(server: Server) -> None:
    body = {"model": "chat", "messages": ASK, "max_tokens": 6, "stream": True}
    headers = {"x-api-key": API_KEYS[1], "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, headers=headers, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names  # each event's name is its data's type
    assert (
        names[0] == "message_start"
        and names[1] == "content_block_start"
        and names[-2:] == ["message_delta", "message_stop"]
    )
    assert set(names[2:-3]) == {"content_block_delta"} and names[-3] == "content_block_stop"
    assert data[-2]["delta"]["stop_reason"] == "max_tokens" and data[-2]["usage"]["output_tokens"] == 6


def test_tool_use_with_each_tool_choice_and_a_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": "Is it raining in Oslo?"}]
    one: Any = {"type": "any", "disable_parallel_tool_use": True}  # one call: 60 tokens hold it whole
    forced = client.messages.create(model="chat", messages=ask, max_tokens=60, tools=[WEATHER], tool_choice=one)
    assert forced.stop_reason == "tool_use"
    uses = [b for b in forced.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    named = client.messages.create(
        model="chat",
        messages=ask,
        max_tokens=60,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert [b.type for b in named.content] == ["tool_use"]
    history: Any = [
        *ask,
        {"role": "assistant", "content": [u.model_dump() for u in uses]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "Light rain, 7 C"} for u in uses],
        },
    ]
    final = client.messages.create(
        model="chat", messages=history, max_tokens=30, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert final.content[0].type == "text" and final.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(model="chat", messages=ask, max_tokens=60, tools=[WEATHER], tool_choice=one) as stream:
        streamed = stream.get_final_message()
    assert [b.input for b in streamed.content if b.type == "tool_use"] == [u.input for u in uses]
    assert streamed.stop_reason == forced.stop_reason


def test_structured_output_through_output_config(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"module": {"type": "string", "maxLength": 12}, "stdlib": {"type": "boolean"}},
        "required": ["module", "stdlib"],
        "additionalProperties": False,
    }
    out = client.messages.create(
        model="chat", messages=ASK, max_tokens=40, output_config={"format": {"type": "json_schema", "schema": schema}}
    )
    jsonschema.validate(json.loads(out.content[0].text), schema)


def test_count_tokens_matches_what_the_answer_used(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="chat", messages=ASK, system="Be brief.")
    used = client.messages.create(model="chat", messages=ASK, system="Be brief.", max_tokens=2)
    assert counted.input_tokens == used.usage.input_tokens > 0
    with_tools = client.messages.count_tokens(model="chat", messages=ASK, tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens  # the tools are part of the prompt


def test_errors_in_anthropics_shape(client: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model="chat", messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}], max_tokens=5
        )
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-9", messages=ASK, max_tokens=5)
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        client.messages.create(
            model="chat", messages=ASK, max_tokens=5, tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}
        )
    stranger = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        stranger.messages.create(model="chat", messages=ASK, max_tokens=5)
    assert auth.value.body["error"]["type"] == "authentication_error"


def test_rag_through_the_messages_api_cites_in_anthropics_form(client: anthropic.Anthropic) -> None:
    out = client.messages.create(
        model="rag", messages=[{"role": "user", "content": "How do I parse JSON?"}], max_tokens=40
    )
    [block] = out.content
    assert block.type == "text" and block.text
    for c in block.citations or []:
        assert c.type == "char_location" and c.start_char_index < c.end_char_index and c.cited_text


def test_langchain_chat_anthropic_invoke_and_stream(server: Server) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(base_url=server.url, api_key=API_KEYS[0], model="chat", max_tokens=8, max_retries=0)
    invoked = llm.invoke("Say hi")
    assert isinstance(invoked.content, str) and invoked.content
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Say hi"))
    assert streamed == invoked.content
