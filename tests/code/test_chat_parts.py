"""The chat engine's parts, each alone: batch state, sampling chain, detokenizer, waiting queue, health.

No server and no model: small random tensors in a real `DynamicCache`, hand-made logits, and the real
SmolLM2 tokenizer (artifacts/base/chat) for the detokenizer.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, DynamicCache, PreTrainedTokenizerBase

from core.errors import QueueFull
from serving.engines.generation.batch import Batch, SlackLayer, left_pad
from serving.engines.generation.detokenizer import IncrementalDetokenizer
from serving.engines.generation.health import StepHealth
from serving.engines.generation.prefix_cache import PrefixCache
from serving.engines.generation.request import Request
from serving.engines.generation.sampling import GREEDY, RowSampler, Temperature, TopK, TopP, sample
from serving.engines.generation.waiting import WaitingQueue
from serving.engines.types import SamplingParams

LAYERS, HEADS, DIM = 2, 2, 4

# ---- batch -------------------------------------------------------------------------------------------


def _batch(rows: list[str], lengths: list[int], width: int) -> Batch[str]:
    """Rows with `lengths` real tokens, left-padded to `width`; random keys/values, zero under padding."""
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    kv = []
    for _ in range(LAYERS):
        k, v = torch.randn(len(rows), HEADS, width, DIM), torch.randn(len(rows), HEADS, width, DIM)
        under = mask[:, None, :, None].bool()  # (B, 1, L, 1)
        kv.append((k * under, v * under))
    nxt = torch.arange(len(rows), dtype=torch.long).view(-1, 1) + 100 * (ord(rows[0][0]) - ord("a"))
    return Batch(rows, DynamicCache(ddp_cache_data=kv), mask, nxt)


def _keys(b: Batch[str], layer: int = 0) -> torch.Tensor:
    keys: torch.Tensor = b.cache.layers[layer].keys  # type: ignore[union-attr,assignment]
    return keys


def test_merge_left_pads_the_shorter_side() -> None:
    torch.manual_seed(0)
    a, b = _batch(["a0", "a1"], [3, 2], 3), _batch(["b0"], [5], 5)
    a_keys, a_mask, b_keys = _keys(a).clone(), a.mask.clone(), _keys(b).clone()
    a.merge(b)
    assert a.rows == ["a0", "a1", "b0"] and len(a) == 3
    assert a.mask.shape == (3, 5) and a.next.shape == (3, 1)
    for layer in range(LAYERS):
        assert a.cache.layers[layer].keys.shape == (3, HEADS, 5, DIM)  # type: ignore[union-attr]
        assert a.cache.layers[layer].values.shape == (3, HEADS, 5, DIM)  # type: ignore[union-attr]
    assert torch.equal(a.mask[:2, :2], torch.zeros(2, 2, dtype=torch.long))  # the shorter side got 2 pad columns
    assert torch.equal(a.mask[:2, 2:], a_mask) and torch.equal(a.mask[2], torch.ones(5, dtype=torch.long))
    assert torch.equal(_keys(a)[:2, :, 2:], a_keys) and torch.equal(_keys(a)[2:], b_keys)
    assert not _keys(a)[:2, :, :2].any()

    longer = _batch(["c0"], [4], 6)  # now the new side is the longer one
    a.merge(longer)
    assert a.mask.shape == (4, 6) and not a.mask[:3, 0].any() and a.rows[-1] == "c0"


def test_merge_into_and_from_an_empty_batch() -> None:
    empty: Batch[str] = Batch.empty("cpu")
    assert len(empty) == 0 and empty.mask.shape == (0, 0) and empty.next.shape == (0, 1)
    b = _batch(["b0", "b1"], [2, 4], 4)
    empty.merge(b)
    assert empty.rows == ["b0", "b1"] and empty.mask.shape == (2, 4)
    before = empty.mask.clone()
    empty.merge(Batch.empty("cpu"))
    assert torch.equal(empty.mask, before) and len(empty) == 2


def test_select_keeps_the_right_rows_and_trims_all_padding_columns() -> None:
    torch.manual_seed(1)
    b = _batch(["r0", "r1", "r2"], [2, 6, 3], 6)
    keys, nxt = _keys(b).clone(), b.next.clone()
    b.select([2, 0])  # the longest row leaves: 3 leading columns are padding in both remaining rows
    assert b.rows == ["r2", "r0"]
    assert b.mask.shape == (2, 3) and b.mask[:, -1].all() and b.mask.any(0).all()
    assert torch.equal(b.mask, torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert torch.equal(_keys(b), keys[[2, 0], :, 3:]) and torch.equal(b.next, nxt[[2, 0]])
    b.select([])
    assert len(b) == 0 and b.mask.shape == (0, 0) and b.next.shape == (0, 1)


def test_slack_layer_grows_in_place_and_equals_concatenation() -> None:
    layer, cat_keys = SlackLayer(), torch.zeros((2, 3, 0, 4))
    steps = [torch.randn(2, 3, n, 4) for n in (5, 1, 1, *([1] * 70))]  # a prefill, then decode steps past the room
    pointers = []
    for step in steps:
        keys, values = layer.update(step, step * 2)
        cat_keys = torch.cat([cat_keys, step], dim=-2)
        assert torch.equal(keys, cat_keys) and torch.equal(values, cat_keys * 2)
        pointers.append(keys.data_ptr())
    assert len(set(pointers)) == 2  # one buffer with room for 69 positions, then one copy into a bigger buffer
    layer.keys, layer.values = cat_keys[:1].clone(), (cat_keys[:1] * 2).clone()  # what Batch.select does
    keys, _ = layer.update(steps[1][:1], steps[1][:1] * 2)
    assert torch.equal(keys, torch.cat([cat_keys[:1], steps[1][:1]], dim=-2))


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ---- sampling ----------------------------------------------------------------------------------------

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def _support(step: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> set[int]:
    return {int(i) for i in torch.nonzero(torch.isfinite(step(logits))).flatten()}


def test_greedy_is_argmax_on_the_batched_path() -> None:
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, [GREEDY] * 5), logits.argmax(-1))
    assert RowSampler.from_params(SamplingParams(max_tokens=1, temperature=0, top_p=0.5, seed=3)).plain_greedy
    mixed = sample(logits, [GREEDY, RowSampler.from_params(SamplingParams(4, temperature=1.0, seed=1)), GREEDY])
    assert mixed[0] == logits[0].argmax() and mixed[2] == logits[2].argmax()


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = PROBS.log()
    assert _support(TopP(0.7), logits) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert _support(TopP(0.8), logits) == {0, 1}
    assert _support(TopP(0.85), logits) == {0, 1, 2}
    assert _support(TopP(0.1), logits) == {0}  # always at least the most likely token
    shuffled = logits[[2, 0, 3, 1]]  # order in the vocabulary does not matter
    assert _support(TopP(0.7), shuffled) == {1, 3}
    draws = RowSampler.from_params(SamplingParams(4, temperature=1.0, top_p=0.7, seed=0))
    assert {draws.pick(logits) for _ in range(200)} == {0, 1}


def test_top_k_keeps_the_k_most_likely() -> None:
    logits = PROBS.log()
    assert _support(TopK(2), logits) == {0, 1}
    assert _support(TopK(1), logits[[2, 0, 3, 1]]) == {1}
    assert _support(TopK(99), logits) == set(range(len(PROBS)))
    draws = RowSampler.from_params(SamplingParams(4, temperature=1.0, top_k=2, seed=0))
    assert {draws.pick(logits) for _ in range(200)} == {0, 1}


def test_temperature_scales_and_keeps_the_full_support() -> None:
    logits = PROBS.log()
    assert torch.allclose(Temperature(2.0)(logits), logits / 2)
    s = RowSampler.from_params(SamplingParams(4, temperature=0.5, seed=0))
    assert torch.allclose(s.process(logits).softmax(-1), (logits / 0.5).softmax(-1))
    hot = RowSampler.from_params(SamplingParams(4, temperature=5.0, seed=0))
    assert {hot.pick(logits) for _ in range(300)} == {0, 1, 2, 3}
    cold = RowSampler.from_params(SamplingParams(4, temperature=0.01, seed=0))
    assert {cold.pick(logits) for _ in range(50)} == {0}


def test_a_seeded_sampler_reproduces_its_draws() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))

    def draws(seed: int) -> list[list[int]]:
        s = RowSampler.from_params(SamplingParams(8, temperature=1.0, top_p=0.95, seed=seed))
        return [sample(logits, [GREEDY, s, GREEDY]).tolist() for _ in range(30)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


# ---- detokenizer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(base_dir / "chat"))


TEXTS = [
    "Hello, world! A plain sentence.",
    "naïve café — Ünïcödé, 日本語のテキスト, emoji 🙂👍🏽 and a flag 🇫🇷.",
    "  leading spaces,\ttabs,\n\nblank lines   and trailing spaces   ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code, with Ω and ∑",
]


class _Counting:
    """Wraps a tokenizer and counts how many token ids it decodes in all."""

    def __init__(self, tok: PreTrainedTokenizerBase) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.decoded += len(ids)
        return str(self.tok.decode(ids, **kwargs))


def _stream(tok: object, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    d = IncrementalDetokenizer(tok, stop)  # type: ignore[arg-type]
    deltas = []
    for t in ids:
        deltas.append(d.push(t))
        if d.stopped:
            return deltas, True
    deltas.append(d.flush())
    return deltas, d.stopped


def _cut_at_first_stop(text: str, stops: tuple[str, ...]) -> str:
    """Reference: the text up to the stop string that completes first in `text`."""
    for end in range(len(text) + 1):
        hits = [end - len(s) for s in stops if text[:end].endswith(s)]
        if hits:
            return text[: min(hits)]
    return text


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_full_decode(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas, stopped = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) and not stopped
    assert not any("\ufffd" in d for d in deltas)  # incomplete characters are held back, never sent


def test_special_tokens_are_skipped_like_decode(tokenizer: PreTrainedTokenizerBase) -> None:
    eos = tokenizer.eos_token_id
    assert isinstance(eos, int)
    ids = [
        *tokenizer.encode("Hi 🙂", add_special_tokens=False),
        eos,
        *tokenizer.encode(" there", add_special_tokens=False),
    ]
    assert "".join(_stream(tokenizer, ids)[0]) == tokenizer.decode(ids, skip_special_tokens=True)


def test_random_tokens_match_the_full_decode(tokenizer: PreTrainedTokenizerBase) -> None:
    """Arbitrary ids (byte tokens that never complete a character included) still add up exactly."""
    rng = random.Random(0)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    for _ in range(5):
        ids = [rng.choice(vocab) for _ in range(60)]
        assert "".join(_stream(tokenizer, ids)[0]) == tokenizer.decode(ids, skip_special_tokens=True)


def test_decoding_is_incremental_not_quadratic(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode(" ".join(TEXTS * 6), add_special_tokens=False)
    counting = _Counting(tokenizer)
    assert "".join(_stream(counting, ids)[0]) == tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) > 300 and counting.decoded < 10 * len(ids)  # re-decoding everything: ~len(ids)² / 2


@pytest.mark.parametrize(
    ("text", "stops"),
    [
        ("The answer is forty-two. Goodbye now.", ("forty-two",)),
        ("Keep going #!# then this is hidden", ("#!#",)),
        ("naïve café 日本語 and more text", ("日本", "never")),
        ("one two three four", ("three", "two three four")),  # "three" completes first
        ("ends with a partial stop END", ("END!",)),  # never completes: flushed at the end
    ],
)
def test_stop_strings_across_token_boundaries(
    tokenizer: PreTrainedTokenizerBase, text: str, stops: tuple[str, ...]
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    full = str(tokenizer.decode(ids, skip_special_tokens=True))
    deltas, stopped = _stream(tokenizer, ids, stops)
    assert "".join(deltas) == _cut_at_first_stop(full, stops)
    assert stopped == any(s in full for s in stops)


def test_a_stop_string_prefix_is_held_back(tokenizer: PreTrainedTokenizerBase) -> None:
    d = IncrementalDetokenizer(tokenizer, ("Goodbye",))
    sent = "".join(d.push(t) for t in tokenizer.encode("Hello. Good", add_special_tokens=False))
    assert sent == "Hello. "  # "Good" could begin "Goodbye": held; the space before it cannot, so it is sent
    assert d.flush() == "Good" and not d.stopped


def test_spanning_stop_is_split_by_the_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Guard for the stop-string test: in its texts these stops span several tokens (日本 spans bytes)."""
    for text, stop in (
        ("The answer is forty-two.", "forty-two"),
        ("Keep going #!# then", "#!#"),
        ("café 日本語", "日本"),
    ):
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
        assert not any(stop in p for p in pieces)


# ---- waiting queue and health ------------------------------------------------------------------------


def test_ignore_eos_runs_to_max_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """End of sequence ends an answer with "stop", unless `ignore_eos` (vLLM's benchmark flag): then it is one more
    token, and the answer ends at max_tokens with "length"."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens = [*tokenizer("Hello world", add_special_tokens=False)["input_ids"], eos, eos]
    loop = asyncio.new_event_loop()

    def finish(ignore_eos: bool) -> tuple[int, str | None]:
        params = SamplingParams(max_tokens=len(tokens), temperature=0, ignore_eos=ignore_eos)
        req = Request([1, 2], params, tokenizer=tokenizer, sampler=GREEDY, loop=loop, deadline=float("inf"))
        for t in tokens:
            delta = req.advance(t, eos=t == eos, window=1024)
            if delta.finish_reason is not None:
                return delta.completion_tokens, delta.finish_reason
        return len(req.generated), None

    try:
        assert finish(ignore_eos=False) == (len(tokens) - 2, "stop")
        assert finish(ignore_eos=True) == (len(tokens), "length")
    finally:
        loop.close()


def test_prefix_cache_learns_shared_beginnings_and_evicts_the_least_recent() -> None:
    cache = PrefixCache(max_tokens=64, min_tokens=16, block=16)

    def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]

    a, b = [*range(40), 100, 101], [*range(40), 200]
    assert cache.worth_keeping(a) == 0  # nothing seen before it
    assert cache.worth_keeping(b) == 32  # 40 tokens shared with `a`: two whole blocks
    cache.keep(tuple(b[:32]), kv(32))
    assert cache.worth_keeping([*range(40), 300]) == 0  # kept already
    hit = cache.lookup([a, b])
    assert hit is not None and hit.tokens == tuple(range(32))
    assert cache.lookup([a, [5, 6]]) is None  # every prompt must start with it
    assert cache.lookup([list(range(32))]) is None  # a prompt's last token must still run, for its logits
    other = tuple(range(1000, 1048))
    cache.keep(other, kv(48))  # 32 + 48 tokens > 64: the least recently used prefix goes
    assert cache.lookup([[*other, 1]]) is not None and cache.lookup([a]) is None
    assert (cache.stats.hits, cache.stats.tokens_reused, cache.stats.kept) == (2, 32 * 2 + 48, 1)


def test_waiting_queue_bound_order_and_gauge_hook() -> None:
    changes: list[int] = []
    q = WaitingQueue(max_queue=1, on_change=lambda: changes.append(len(q)))
    a, b, c = (object() for _ in range(3))
    q.put(a, free_slots=1, retry_after_s=2)  # type: ignore[arg-type]
    q.put(b, free_slots=1, retry_after_s=2)  # type: ignore[arg-type]
    with pytest.raises(QueueFull, match="2 requests waiting") as full:
        q.put(c, free_slots=1, retry_after_s=2)  # type: ignore[arg-type]
    assert full.value.retry_after_s == 2
    assert q.remove(a) and not q.remove(a)  # type: ignore[arg-type]
    assert changes == [1, 2, 1]
    q.push_front([a, c])  # type: ignore[list-item]
    assert [q.pop(), q.pop(), q.pop(), q.pop()] == [a, c, b, None]
    q.stop()
    assert not q.wait(busy=lambda: True)


def test_health_counts_consecutive_failed_steps() -> None:
    h = StepHealth(max_failed_steps=2)
    assert h.check(thread_exited=False).healthy
    h.step_failed(RuntimeError("boom"))
    h.step_succeeded()
    h.step_failed(RuntimeError("boom"))
    assert h.check(thread_exited=False).healthy  # not consecutive
    h.step_failed(RuntimeError("kaboom"))
    state = h.check(thread_exited=False)
    assert not state.healthy and state.reason == "the last 2 generation steps failed (last error: RuntimeError: kaboom)"
    assert h.check(thread_exited=True).reason == "the scheduler thread exited"
    h.reset()
    h.thread_died(ValueError("bug"))
    assert h.check(thread_exited=True).reason == "the scheduler thread died (ValueError: bug)"
