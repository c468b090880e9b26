"""Structured output and OpenAI's required fields, through a real `bentoml serve` and unchanged clients.

The answers come from the tiny pipeline's chat champion (SmolLM2-135M): whatever it would rather say,
constrained decoding makes `response_format` hold, so these assertions do not depend on its quality.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from tests.serving.conftest import API_KEYS, Server
from tests.serving.openai_spec import REQUIRED_CHUNK, SPEC, missing
from tests.serving.tools import WEATHER_OPENAI as WEATHER

pytestmark = pytest.mark.slow


class Library(BaseModel):
    name: str = Field(max_length=16)
    kind: Literal["module", "package"]
    stars: int = Field(ge=0, le=100000)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 20}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Which Python module converts objects to JSON? Answer in JSON."}]


@pytest.fixture(scope="module")
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEYS[0], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.headers, timeout=120)


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_the_openai_sdk_parses_structured_output_into_a_pydantic_model(client: OpenAI) -> None:
    out = client.chat.completions.parse(
        model="chat",
        messages=[{"role": "user", "content": "Describe the json module."}],
        response_format=Library,
        max_tokens=60,
        temperature=0,
    )
    msg = out.choices[0].message
    assert out.choices[0].finish_reason == "stop" and msg.refusal is None
    assert isinstance(msg.parsed, Library)  # the SDK validated it against the model it sent as the schema


def test_json_schema_plain_and_streamed_validate(http: httpx.Client) -> None:
    body = {
        "model": "chat",
        "messages": ASK,
        "max_tokens": 40,
        "temperature": 0,
        "response_format": _json_schema(SCHEMA),
    }
    plain = http.post("/v1/chat/completions", json=body).json()
    jsonschema.validate(json.loads(plain["choices"][0]["message"]["content"]), SCHEMA)
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]  # the same greedy, constrained answer


def test_json_object_with_sampling_parses(client: OpenAI) -> None:
    for seed in range(3):
        out = client.chat.completions.create(
            model="chat",
            messages=ASK,
            max_tokens=48,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_object"},
        )
        if out.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(out.choices[0].message.content or ""), dict)
        else:  # max_tokens came first: an honest prefix of an object, never padded
            assert (out.choices[0].message.content or "").startswith("{")


def test_langchain_with_structured_output(server: Server) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server.url}/v1", api_key=API_KEYS[0], model="chat", max_tokens=60, temperature=0)
    out = chat.with_structured_output(Library, method="json_schema").invoke("Describe the json module.")
    assert isinstance(out, Library)


def test_bad_response_formats_get_a_400_naming_the_field(http: httpx.Client) -> None:
    base = {"model": "chat", "messages": ASK, "max_tokens": 8}
    for fmt, says in [
        (_json_schema({"type": "nonsense"}), "nonsense"),
        (_json_schema({"type": "string", "pattern": "[a-z"}), "unclosed character class"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "yaml"}, "type"),
    ]:
        r = http.post("/v1/chat/completions", json={**base, "response_format": fmt})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert says in err["message"] and (err["param"] or "").startswith("response_format"), err


def test_responses_carry_every_field_the_openai_spec_requires(http: httpx.Client) -> None:
    """Spec-required keys are present even when null (`refusal`, `logprobs`, a chunk's `finish_reason`)."""
    body = {"model": "chat", "messages": ASK, "max_tokens": 6, "temperature": 0}
    plain = http.post("/v1/chat/completions", json=body).json()
    assert missing(plain) == [], SPEC
    assert plain["choices"][0]["message"]["refusal"] is None and plain["choices"][0]["logprobs"] is None
    assert "sources" not in plain  # RAG's extras stay out of plain answers
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=stream) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert chunks and all(missing(c, REQUIRED_CHUNK) == [] for c in chunks), SPEC
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][:-1] == [None] * (len(chunks) - 2)
    # include_usage: `usage: null` on every chunk, the totals on the last (which has no choices)
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["total_tokens"] > 0
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert not any('"usage"' in line for line in r.iter_lines())  # not asked: not written


# ---- tools -------------------------------------------------------------------------------------------

TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]},
    },
}
RAINING = [{"role": "user", "content": "Is it raining in Oslo right now?"}]


def _valid_call(call: Any, tool: dict[str, Any]) -> None:
    assert call.type == "function" and call.id and call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tool_choice_required_named_none_and_auto(client: OpenAI, http: httpx.Client) -> None:
    ask: dict[str, Any] = {
        "model": "chat",
        "messages": RAINING,
        "tools": [WEATHER, TIME],
        "max_tokens": 60,
        "temperature": 0,
    }
    out = client.chat.completions.create(**ask, tool_choice="required", parallel_tool_calls=False)
    msg = out.choices[0].message
    assert out.choices[0].finish_reason == "tool_calls" and msg.content is None and len(msg.tool_calls or []) == 1
    _valid_call(msg.tool_calls[0], WEATHER if msg.tool_calls[0].function.name == "get_weather" else TIME)

    parallel = client.chat.completions.create(**ask, tool_choice="required")  # a small model may call on and on:
    calls = parallel.choices[0].message.tool_calls or []  # every whole call is kept, an unfinished one is not
    assert calls and parallel.choices[0].finish_reason in ("tool_calls", "length")
    for call in calls:
        _valid_call(call, WEATHER if call.function.name == "get_weather" else TIME)

    named = client.chat.completions.create(
        **ask, tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]

    none = client.chat.completions.create(**{**ask, "max_tokens": 8}, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")

    auto = client.chat.completions.create(**ask)  # the model may answer or call; either way it is whole
    if auto.choices[0].message.tool_calls:
        assert auto.choices[0].finish_reason in ("tool_calls", "length")
    else:
        assert isinstance(auto.choices[0].message.content, str) and not auto.choices[0].message.content.startswith("<")

    raw = http.post(
        "/v1/chat/completions", json={**ask, "tool_choice": "required", "parallel_tool_calls": False}
    ).json()
    assert missing(raw) == [], SPEC


def test_tool_calls_stream_in_openais_shape(client: OpenAI, http: httpx.Client) -> None:
    ask: dict[str, Any] = {
        "model": "chat",
        "messages": RAINING,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 60,
        "temperature": 0,
    }
    plain = client.chat.completions.create(**ask).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**ask, stream=True))
    args, names, finish = "", "", None
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or []:
            assert d.index == 0
            names += d.function.name or "" if d.function else ""
            args += d.function.arguments or "" if d.function else ""
        finish = c.choices[0].finish_reason or finish
    assert plain and finish == "tool_calls"
    assert (names, args) == (plain[0].function.name, plain[0].function.arguments)
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    first, rest = deltas[0], deltas[1:]
    assert first.id and first.type == "function" and first.function and first.function.name == "get_weather"
    assert rest and all(d.id is None and d.function and not d.function.name for d in rest)  # then arguments alone
    assert len(rest) > 2  # in fragments, as the model writes them
    with http.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as r:
        raw = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert all(missing(c, REQUIRED_CHUNK) == [] for c in raw), SPEC


def test_langchain_agent_loop_calls_the_tool_and_answers_from_its_result(server: Server) -> None:
    """bind_tools with the tool forced on the first step (a 135M model must not make this flaky), the tool's
    result sent back as a ToolMessage, then a final answer from the same model."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        return f"Light rain in {city}, 7 degrees."

    llm = ChatOpenAI(base_url=f"{server.url}/v1", api_key=API_KEYS[0], model="chat", max_tokens=40, temperature=0)
    messages: list[Any] = [HumanMessage("Is it raining in Oslo right now?")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert len(first.tool_calls) >= 1 and first.tool_calls[0]["name"] == "get_weather"
    assert isinstance(first.tool_calls[0]["args"]["city"], str)
    messages.append(first)
    for call in first.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    final = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert isinstance(final.content, str) and final.content and not final.tool_calls


def test_tool_errors_get_a_400_naming_the_field(http: httpx.Client) -> None:
    base: dict[str, Any] = {"model": "chat", "messages": RAINING, "tools": [WEATHER], "max_tokens": 8}
    bad_schema = {
        **WEATHER,
        "function": {
            **WEATHER["function"],
            "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-"}}},
        },
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [bad_schema], "tool_choice": "required"}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        (
            {"messages": [*RAINING, {"role": "tool", "tool_call_id": "call_x", "content": "7"}]},
            "messages.1.tool_call_id",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"model": "rag"}, "tools"),
    ]
    for extra, param in cases:
        r = http.post("/v1/chat/completions", json={**base, **extra})
        assert r.status_code == 400, (extra, r.text)
        assert (r.json()["error"]["param"] or "").startswith(param), (extra, r.json())


# ---- logprobs and penalties --------------------------------------------------------------------------


def test_logprobs_plain_and_streamed_in_openais_shape(client: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": "chat",
        "messages": ASK,
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
        "frequency_penalty": 0.5,
    }
    out = client.chat.completions.create(**ask)
    content = out.choices[0].logprobs.content
    assert content and len(content) == out.usage.completion_tokens
    assert "".join(t.token for t in content) == out.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes for t in content)
    streamed = [
        t
        for c in client.chat.completions.create(**ask, stream=True)
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    assert (
        client.chat.completions.create(**{**ask, "logprobs": False, "top_logprobs": None}).choices[0].logprobs is None
    )


def test_n_choices_plain_and_streamed(client: OpenAI) -> None:
    ask: dict[str, Any] = {"model": "chat", "messages": ASK, "max_tokens": 6, "n": 3}
    greedy = client.chat.completions.create(**ask, temperature=0)
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.message.content for c in greedy.choices}) == 1  # greedy: the same answer three times
    assert greedy.usage and greedy.usage.completion_tokens == sum(3 * [greedy.usage.completion_tokens // 3])
    seeded = client.chat.completions.create(**ask, temperature=1.0, seed=7)
    again = client.chat.completions.create(**ask, temperature=1.0, seed=7)
    assert [c.message.content for c in seeded.choices] == [c.message.content for c in again.choices]  # reproducible
    texts = {0: "", 1: "", 2: ""}
    for c in client.chat.completions.create(**ask, temperature=1.0, seed=7, stream=True):
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert [texts[i] for i in range(3)] == [c.message.content for c in seeded.choices]


# ---- legacy completions, tokenize, detokenize -------------------------------------------------------


def test_legacy_completions_plain_streamed_with_logprobs_and_echo(client: OpenAI) -> None:
    prompt = "The json module in Python"
    out = client.completions.create(model="chat", prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    choice = out.choices[0]
    assert out.object == "text_completion" and choice.finish_reason in ("stop", "length") and choice.text
    assert choice.logprobs and "".join(choice.logprobs.tokens or []) == choice.text
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs or [])
    assert out.usage and out.usage.completion_tokens == len(choice.logprobs.tokens or [])
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="chat", prompt=prompt, max_tokens=8, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == choice.text
    echoed = client.completions.create(model="chat", prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + choice.text


def test_tokenize_and_detokenize_round_trip(http: httpx.Client) -> None:
    text = "How do I parse JSON?"
    tok = http.post("/v1/tokenize", json={"model": "chat", "prompt": text, "add_special_tokens": False}).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] > 0
    assert http.post("/v1/detokenize", json={"model": "chat", "tokens": tok["tokens"]}).json() == {"prompt": text}
    assert http.post("/tokenize", json={"model": "chat", "prompt": text, "add_special_tokens": False}).json() == tok
    assert http.post("/detokenize", json={"model": "chat", "tokens": tok["tokens"]}).json() == {"prompt": text}
    chat = http.post("/v1/tokenize", json={"model": "chat", "messages": ASK}).json()
    done = http.post("/v1/chat/completions", json={"model": "chat", "messages": ASK, "max_tokens": 1}).json()
    assert chat["count"] == done["usage"]["prompt_tokens"]  # what the chat route feeds the model
    bad = http.post("/v1/detokenize", json={"model": "chat", "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
