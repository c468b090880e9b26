"""core/tool_calls.py and the project's chat template: the format, its grammar and its reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import InvalidRequest
from core.tool_calls import CLOSE, Call, Function, chat_template, parse, render_call, template_for, tool_grammar
from serving.engines.generation.grammar import Grammars
from serving.engines.types import Constraint
from serving.handlers.tools import ToolCallReader, openai_delta
from serving.schemas import ChatCompletionRequest

WEATHER = Function(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
    },
)
TIME = Function("get_time", {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})
PARIS_ARGS = '{"city": "Paris", "unit": "c"}'
PARIS = render_call("get_weather", PARIS_ARGS)


@pytest.fixture(scope="module")
def tok(base_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(base_dir / "chat")


@pytest.fixture(scope="module")
def grammars(tok: PreTrainedTokenizerBase) -> Grammars:
    return Grammars(tok, [tok.eos_token_id])


def _accepts(grammars: Grammars, tok: PreTrainedTokenizerBase, lark: str, text: str) -> bool:
    """Whether the grammar lets the model write exactly `text` and then stop."""
    mask = grammars.matcher(grammars.compile(Constraint("lark", lark, param="tools")))
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        if not bool(mask.allowed()[t]):
            return False
        mask.accept(t)
    return mask.complete and bool(mask.allowed()[tok.eos_token_id])


def test_plain_conversations_render_exactly_as_smollm2s_own_template(tok: PreTrainedTokenizerBase) -> None:
    convos = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
         {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ]  # fmt: skip
    for messages in convos:
        for gen in (True, False):
            own = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ours = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen, chat_template=chat_template()
            )
            assert ours == own
    assert template_for(tok.chat_template) == chat_template()  # SmolLM2's knows no tools
    assert template_for("{% if tools %}...{% endif %}") is None  # a model whose template does keeps its own


def test_tools_calls_and_results_render_in_the_format_the_grammar_holds(tok: PreTrainedTokenizerBase) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS_ARGS}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18"},
    ]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                   chat_template=chat_template())  # fmt: skip
    assert '<tools>\n{"name": "get_weather", "parameters"' in text  # the function objects, compactly
    assert f"<|im_start|>assistant\n{PARIS}<|im_end|>" in text  # history calls look like what the model writes
    assert "<|im_start|>user\n<tool_response>\n18\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_required_named_and_auto_grammars(grammars: Grammars, tok: PreTrainedTokenizerBase) -> None:
    both = [WEATHER, TIME]
    two = PARIS + "\n" + render_call("get_time", {"zone": "CET"})
    required = tool_grammar(both, "required", parallel=True)
    assert required is not None
    assert _accepts(grammars, tok, required, PARIS) and _accepts(grammars, tok, required, two)
    assert not _accepts(grammars, tok, required, "It is sunny.")  # must call
    assert not _accepts(grammars, tok, required, render_call("get_weather", {"city": "Paris"}))  # unit missing
    assert not _accepts(grammars, tok, required, render_call("get_weather", {"city": "Paris", "unit": "k"}))
    single = tool_grammar(both, "required", parallel=False)
    assert single is not None and not _accepts(grammars, tok, single, two)
    named = tool_grammar(both, "get_time", parallel=True)
    assert named is not None and not _accepts(grammars, tok, named, PARIS)  # only the named tool
    auto = tool_grammar(both, "auto", parallel=True)
    assert auto is not None
    assert _accepts(grammars, tok, auto, "It is sunny.") and _accepts(grammars, tok, auto, PARIS)
    assert not _accepts(grammars, tok, auto, "<tool_call>\nnot json\n</tool_call>")  # a started call is held to it
    assert tool_grammar(both, "none", parallel=True) is None


def test_a_tool_schema_the_grammar_cannot_use_is_refused_naming_tools(grammars: Grammars) -> None:
    bad = Function("f", {"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-"}}})
    lark = tool_grammar([bad], "required", parallel=False)
    assert lark is not None
    with pytest.raises(InvalidRequest, match="tools' parameter schemas") as e:
        grammars.compile(Constraint("lark", lark, param="tools"))
    assert e.value.param == "tools"


def test_parse_reads_calls_and_never_makes_one_up() -> None:
    two = PARIS + "\n" + render_call("get_time", {"zone": "CET"})
    assert parse(two) == (
        None,
        [Call("get_weather", '{"city": "Paris", "unit": "c"}'), Call("get_time", '{"zone": "CET"}')],
    )
    assert parse("It is sunny.") == ("It is sunny.", [])
    cut = PARIS[:30]  # max_tokens inside the call: no call, the text as it is
    assert parse(cut) == (cut, [])
    assert parse(PARIS + "\n" + cut) == (
        cut,
        [Call("get_weather", '{"city": "Paris", "unit": "c"}')],
    )  # the whole one kept


def test_the_stream_reader_streams_calls_as_openai_does() -> None:
    two = PARIS + "\n" + render_call("get_time", {"zone": "CET"})
    reader = ToolCallReader("auto")
    sent, events = "", []
    for ch in two:  # one character at a time: the worst split
        content, more = reader.push(ch)
        sent += content
        events += more
    assert sent == "" and reader.finish() == ("", [])
    starts = [e for e in events if e.id is not None]
    assert [(e.index, e.name) for e in starts] == [(0, "get_weather"), (1, "get_time")]
    assert len({e.id for e in starts}) == 2
    args = ["".join(e.arguments for e in events if e.index == i) for i in (0, 1)]
    assert [json.loads(a) for a in args] == [{"city": "Paris", "unit": "c"}, {"zone": "CET"}]
    assert sum(1 for e in events if e.index == 0 and e.arguments) > 5  # in fragments, as the model writes them
    assert [e.index for e in events if e.done] == [0, 1]
    assert [c.function.arguments for c in reader.calls] == args
    deltas = [openai_delta(e) for e in events]
    first = deltas[0]
    assert first is not None and first.id and first.type == "function" and first.function.name == "get_weather"  # type: ignore[union-attr]
    assert all(d is None or d.id is None or d.function.name for d in deltas[1:])  # type: ignore[union-attr]
    text = ToolCallReader("auto")
    assert text.push("I")[0] == "I" and text.push(" think")[0] == " think"  # free text streams as it comes
    header = ToolCallReader("required")
    assert header.push(PARIS[:8]) == ("", []) and header.finish() == (PARIS[:8], [])  # no call began: content
    cut = ToolCallReader("required")
    _, begun = cut.push(PARIS[:60])
    rest, end = cut.finish()  # max_tokens inside the arguments: what was written goes out as arguments
    assert rest == "" and begun[0].name == "get_weather" and end[-1].done
    assert "".join(e.arguments for e in begun + end) == PARIS[PARIS.index('"arguments": ') + 13 : 60]
    assert CLOSE.strip() in PARIS


def test_a_call_in_another_shape_is_read_whole() -> None:
    reader = ToolCallReader("required")
    _, events = reader.push('<tool_call>\n{"arguments": {"city": "Oslo"}, "name": "get_weather"}\n</tool_call>')
    [event] = events
    assert event.name == "get_weather" and json.loads(event.arguments) == {"city": "Oslo"} and event.done


def test_request_checks_name_the_field() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters}}
    base = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}

    def error(**extra: object) -> InvalidRequest:
        with pytest.raises(InvalidRequest) as e:
            ChatCompletionRequest.model_validate({**base, **extra}).constraint()
        return e.value

    assert error(tool_choice={"type": "function", "function": {"name": "nope"}}).param == "tool_choice"
    assert error(response_format={"type": "json_object"}).param == "response_format"
    assert error(tools=[tool, tool]).param == "tools"
    orphan = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "1"}]
    assert error(messages=orphan).param == "messages.1.tool_call_id"
    assert ChatCompletionRequest.model_validate(base).tool_choice_in_effect() == "auto"
    assert ChatCompletionRequest.model_validate({**base, "tools": None}).tool_choice_in_effect() == "none"
    none = ChatCompletionRequest.model_validate({**base, "tool_choice": "none"})
    assert none.constraint() is None and none.template_tools() is None


def test_objects_with_properties_are_closed_unless_the_schema_says() -> None:
    from core.json_schemas import close_objects

    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}},
                       "c": {"type": "array", "items": {"properties": {"d": {"type": "integer"}}}},
                       "open": {"type": "object", "properties": {}, "additionalProperties": True}},
        "$defs": {"x": {"anyOf": [{"properties": {"e": {}}}, {"type": "string"}]}},
    }  # fmt: skip
    out = close_objects(schema)
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"]["items"]["additionalProperties"] is False
    assert out["properties"]["open"]["additionalProperties"] is True  # said so: left open
    assert out["$defs"]["x"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in close_objects({"type": "object"})  # any object stays any object
    assert "additionalProperties" not in schema  # a copy: the request's schema is not changed


def test_evaluation_counts_only_one_whole_search_call() -> None:
    from evaluation.tool_use import is_search_call

    assert is_search_call(render_call("search_docs", {"query": "read a file"}))
    assert not is_search_call(render_call("search_docs", {"q": "x"}))  # no `query`
    assert not is_search_call(render_call("get_weather", {"city": "Oslo"}))
    assert not is_search_call(
        render_call("search_docs", {"query": "a"}) + "\n" + render_call("search_docs", {"query": "b"})
    )
    assert not is_search_call("The answer is in the docs.")
