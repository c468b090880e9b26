"""Logprobs and presence/frequency penalties in the chat engine, on the real base chat model (no HTTP)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from serving.engines.chat import ChatEngine
from serving.engines.generation.sampling import Logprobs, Penalties
from serving.engines.types import Completion, SamplingParams
from tests.serving.conftest import running_engine

REPEAT = [{"role": "user", "content": "Write the word 'hello' many times."}]


@pytest.fixture(scope="module")
def engine(chat_parts) -> Iterator[ChatEngine]:  # type: ignore[no-untyped-def]
    with running_engine(chat_parts, max_batch_size=4, max_queue=8, max_context_tokens=512, timeout_s=120) as eng:
        yield eng


def _run(engine: ChatEngine, *jobs: tuple[list[int], SamplingParams]) -> list[Completion]:
    async def go() -> list[Completion]:
        return list(await asyncio.gather(*(engine.submit(p, s).result() for p, s in jobs)))

    return asyncio.run(go())


def test_penalties_subtract_from_generated_tokens_only() -> None:
    p = Penalties(presence=0.5, frequency=0.25)
    logits = torch.zeros(5)
    assert torch.equal(p(logits), logits)  # nothing generated yet: the prompt is not penalised
    for t in (1, 1, 3):
        p.accept(t)
    assert p(logits).tolist() == [0.0, -1.0, 0.0, -0.75, 0.0]


def test_logprobs_record_the_raw_distribution() -> None:
    rec = Logprobs(top=2)
    logits = torch.tensor([0.0, 2.0, 1.0])
    rec.record(logits, 2)
    [choice] = rec.take()
    want = logits.log_softmax(-1)
    assert choice.token == 2 and math.isclose(choice.logprob, float(want[2]), rel_tol=1e-6)
    assert [t for t, _ in choice.top] == [1, 2] and rec.take() == ()


def test_greedy_logprobs_name_each_token_and_its_alternatives(engine: ChatEngine) -> None:
    prompt = engine.encode_messages([{"role": "user", "content": "What is Python?"}])
    plain, logged = _run(
        engine,
        (prompt, SamplingParams(max_tokens=12, temperature=0)),
        (prompt, SamplingParams(max_tokens=12, temperature=0, logprobs=3)),
    )
    assert logged.text == plain.text and plain.logprobs == ()  # asking for logprobs changes nothing else
    assert len(logged.logprobs) == logged.completion_tokens
    assert bytes(b for t in logged.logprobs for b in t.bytes).decode() == logged.text  # the tokens spell the answer
    for t in logged.logprobs:
        assert len(t.top) == 3 and t.top[0].token == t.token and t.logprob == pytest.approx(t.top[0].logprob)
        assert t.logprob <= 0 and t.top[0].logprob >= t.top[1].logprob >= t.top[2].logprob  # greedy took the best


def test_a_frequency_penalty_cuts_repetition(engine: ChatEngine) -> None:
    prompt = engine.encode_messages(REPEAT)
    free, penalised = _run(
        engine,
        (prompt, SamplingParams(max_tokens=40, temperature=0, logprobs=0)),
        (prompt, SamplingParams(max_tokens=40, temperature=0, frequency_penalty=2.0, presence_penalty=1.0, logprobs=0)),
    )

    def most_repeated(c: Completion) -> int:
        return max(Counter(t.token for t in c.logprobs).values())

    assert most_repeated(penalised) < most_repeated(free), (free.text, penalised.text)


def test_identical_prompts_admitted_together_share_one_prefill(engine: ChatEngine) -> None:
    """`prefill` runs each distinct prompt once and copies its cache row to every row that sent it; each row
    then decodes on its own: greedy rows equal the answer generated alone."""
    from serving.engines.generation.forward import decode, prefill

    same = engine.encode_messages([{"role": "user", "content": "Name a fruit."}])
    other = engine.encode_messages([{"role": "user", "content": "Hi"}])
    rows: list[tuple[int, ...]] = []
    hook = engine.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: rows.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    greedy = lambda logits, _rows: logits.argmax(-1)  # noqa: E731
    try:
        batch = prefill(engine.model, ["a", "b", "c", "d"], [same, other, same, same], engine.pad_id, greedy)
        steps = [batch.next.view(-1).tolist()] + [decode(engine.model, batch, greedy).tolist() for _ in range(5)]
    finally:
        hook.remove()
    assert rows[0] == (2, len(same))  # two distinct prompts: two prefill rows for four requests
    assert batch.rows == ["a", "b", "c", "d"] and len(batch) == 4
    tokens = list(zip(*steps, strict=True))
    assert tokens[0] == tokens[2] == tokens[3]  # the three copies decode alike
    alone = _run(engine, (same, SamplingParams(max_tokens=6, temperature=0)))[0]
    assert engine.tokenizer.decode(list(tokens[0])[:6], skip_special_tokens=True) == alone.text
