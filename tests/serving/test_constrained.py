"""Constrained decoding in the chat engine, on the real base chat model (no HTTP).

What must hold whatever the model would rather say: the answer parses and validates against the schema
(greedy and sampled, many seeds and temperatures), constrained and free rows share decode steps without
changing each other's text, a bad schema is refused before any work, and running out of max_tokens ends
the answer with "length" and an honest prefix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import jsonschema
import pytest
import torch

from core.errors import InvalidRequest
from serving.engines.chat import ChatEngine
from serving.engines.generation.grammar import Grammars
from serving.engines.generation.sampling import RowSampler, sample
from serving.engines.types import Completion, Constraint, SamplingParams
from tests.serving.conftest import running_engine
from tests.serving.tools import WEATHER_OPENAI

# bounded (enum, maxLength, maxItems), so every answer completes well within max_tokens
SCHEMA = {
    "type": "object",
    "properties": {
        "language": {"type": "string", "maxLength": 16},
        "year": {"type": "integer", "minimum": 1950, "maximum": 2030},
        "typed": {"enum": ["static", "dynamic"]},
        "uses": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["language", "year", "typed", "uses"],
    "additionalProperties": False,
}
CONSTRAINED = Constraint("json_schema", json.dumps(SCHEMA))
ASK = [{"role": "user", "content": "Describe the Python programming language as JSON."}]


@pytest.fixture(scope="module")
def engine(chat_parts) -> Iterator[ChatEngine]:  # type: ignore[no-untyped-def]
    with running_engine(chat_parts, max_batch_size=4, max_queue=16, max_context_tokens=512, timeout_s=120) as eng:
        yield eng


async def _results(engine: ChatEngine, jobs: list[tuple[list[int], SamplingParams]]) -> list[Completion]:
    return list(await asyncio.gather(*(engine.submit(p, s).result() for p, s in jobs)))


def test_greedy_json_schema_answer_validates(engine: ChatEngine) -> None:
    prompt = engine.encode_messages(ASK)
    [out] = asyncio.run(
        _results(engine, [(prompt, SamplingParams(max_tokens=120, temperature=0, constraint=CONSTRAINED))])
    )
    assert out.finish_reason == "stop", out
    jsonschema.validate(json.loads(out.text), SCHEMA)


def test_sampled_answers_validate_for_many_seeds_and_temperatures(engine: ChatEngine) -> None:
    prompt = engine.encode_messages(ASK)
    jobs = [
        (prompt, SamplingParams(max_tokens=120, temperature=t, top_p=p, seed=seed, constraint=CONSTRAINED))
        for seed, (t, p) in enumerate([(0.5, 1.0), (1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (1.0, 0.9), (1.3, 0.5)] * 2)
    ]
    outs = asyncio.run(_results(engine, jobs))
    for out in outs:
        assert out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out.text), SCHEMA)
    assert len({o.text for o in outs}) > 1  # sampling still samples, inside the grammar


def test_any_json_object(engine: ChatEngine) -> None:
    prompt = engine.encode_messages([{"role": "user", "content": "Give me a JSON object with your name."}])
    params = SamplingParams(max_tokens=60, temperature=0, constraint=Constraint("json_object"))
    [out] = asyncio.run(_results(engine, [(prompt, params)]))
    if out.finish_reason == "stop":
        assert isinstance(json.loads(out.text), dict)
    else:  # a long string value can outlast max_tokens: what came is still a valid start of an object
        assert out.text.startswith("{")


def test_constrained_batched_with_free_rows_gives_the_same_text_as_alone(engine: ChatEngine) -> None:
    constrained = (engine.encode_messages(ASK), SamplingParams(max_tokens=80, temperature=0, constraint=CONSTRAINED))
    free = [
        (engine.encode_messages([{"role": "user", "content": q}]), SamplingParams(max_tokens=40, temperature=0))
        for q in ("What is Python?", "Name three colours.", "Hi")
    ]
    alone = asyncio.run(_results(engine, [constrained]))[0].text
    free_alone = [asyncio.run(_results(engine, [f]))[0].text for f in free]
    together = asyncio.run(_results(engine, [free[0], constrained, free[1], free[2]]))
    assert together[1].text == alone
    assert [together[0].text, together[2].text, together[3].text] == free_alone  # the mask touched only its row


def test_running_out_of_tokens_ends_with_length_and_a_valid_prefix(engine: ChatEngine, chat_parts) -> None:
    _, tok = chat_parts
    prompt = engine.encode_messages(ASK)
    [out] = asyncio.run(
        _results(engine, [(prompt, SamplingParams(max_tokens=6, temperature=0, constraint=CONSTRAINED))])
    )
    assert out.finish_reason == "length" and out.completion_tokens == 6
    grammars = Grammars(tok, engine.eos_ids)
    check = grammars.matcher(grammars.compile(CONSTRAINED))
    for t in tok(out.text, add_special_tokens=False)["input_ids"]:  # the prefix is one the grammar accepts
        assert bool(check.allowed()[t]), out.text
        check.accept(t)


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ('{"type": "nonsense"}', "nonsense"),
        ('{"type": "string", "pattern": "[a-z"}', "unclosed character class"),
        ('{"properties": {"a": {"$ref": "http://example.com/s.json"}}}', "http://example.com/s.json"),
        ('{"allOf": [{"type": "string"}, {"type": "integer"}]}', "Unsatisfiable"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_a_schema_the_grammar_cannot_use_is_refused_before_any_work(engine: ChatEngine, schema: str, says: str) -> None:
    prompt = engine.encode_messages(ASK)
    params = SamplingParams(max_tokens=10, temperature=0, constraint=Constraint("json_schema", schema))

    async def run() -> None:
        engine.submit(prompt, params)

    with pytest.raises(InvalidRequest, match="JSON schema") as e:
        asyncio.run(run())
    assert says in str(e.value) and e.value.param == "response_format"
    assert engine.load()["running"] == 0 and engine.load()["waiting"] == 0


def test_grammar_row_and_plain_greedy_rows_share_one_sample_call(chat_parts) -> None:
    """`sample`: the batched argmax serves plain rows; the grammar row is masked, and told its token."""
    _, tok = chat_parts
    grammars = Grammars(tok, [tok.eos_token_id])
    mask = grammars.matcher(grammars.compile(Constraint("json_object")))
    logits = torch.randn(3, len(tok), generator=torch.Generator().manual_seed(0))
    brace = tok("{", add_special_tokens=False)["input_ids"][0]
    logits[1, brace] = -50.0  # the row would never pick `{` unmasked
    out = sample(
        logits, [RowSampler(), RowSampler.from_params(SamplingParams(1, temperature=0), grammar=mask), RowSampler()]
    )
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()
    assert tok.decode([int(out[1])]).lstrip().startswith("{")
    assert not bool(mask.allowed()[int(out[1])])  # the grammar moved on: an opening brace again is not allowed


def test_even_the_base_135m_model_makes_a_valid_call_when_the_tool_is_required(engine: ChatEngine) -> None:
    """`required` is a constraint: every answer is a call of a given tool with arguments its schema accepts,
    for greedy and sampled decoding alike (the base model has never seen the format)."""
    from core.tool_calls import Function, parse, tool_grammar

    tools = [WEATHER_OPENAI]
    fn = Function("get_weather", WEATHER_OPENAI["function"]["parameters"])  # type: ignore[index]
    grammar = tool_grammar([fn], "required", parallel=False)
    assert grammar is not None
    prompt = engine.encode_messages([{"role": "user", "content": "Is it raining in Oslo?"}], tools)
    jobs = [
        (
            prompt,
            SamplingParams(max_tokens=60, temperature=t, seed=s, constraint=Constraint("lark", grammar, param="tools")),
        )
        for s, t in enumerate([0.0, 0.7, 1.0, 1.5])
    ]
    for out in asyncio.run(_results(engine, jobs)):
        assert out.finish_reason == "stop", out
        content, calls = parse(out.text)
        assert content is None and len(calls) == 1 and calls[0].name == "get_weather"
        jsonschema.validate(json.loads(calls[0].arguments), fn.parameters)
