"""The two forward passes of the scheduler, as small typed steps (gpt-fast's `prefill` / `decode_one_token`).

    prefill   left-padded forwards over new prompts, whole or in chunks (`begin_prefill`, `prefill_step`,
              `finish_prefill`) -> their first tokens and a new `Batch`
    decode    one forward of every row's `next` token against the shared cache -> the following tokens

Both take a `pick` function ((B, vocab) logits, the rows -> (B,) token ids; the engine passes the
sampling chain) and leave the chosen tokens in `batch.next`. `warm_up` runs exactly these steps, with
a merge and a select, so the first request does not pay for lazy initialisation on any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from transformers import DynamicCache, PreTrainedModel

from serving.engines.generation import llama_decode
from serving.engines.generation.batch import Batch, left_pad, new_cache
from serving.engines.generation.prefix_cache import KV, Prefix

T = TypeVar("T")
Pick = Callable[[torch.Tensor, list[Any]], torch.Tensor]
"""(B, vocab) logits and the batch's rows -> (B,) long token ids."""


@dataclass
class Prefilling(Generic[T]):
    """Prompts part-way through their prefill: the whole left-padded prompts and the cache of the columns done.

    Identical prompts are held once (`source` maps each row to its unique prompt) and copied at `finish`.
    """

    rows: list[T]
    prompts: list[tuple[int, ...]]
    """The unique prompts."""
    source: list[int]
    """Each row's index among the unique prompts."""
    ids: torch.Tensor
    """(g, L) long: the unique prompts, left-padded."""
    mask: torch.Tensor
    """(g, L) long: 1 for real tokens."""
    cache: DynamicCache
    done: int = 0
    """Columns already run (in the cache)."""
    reused: int = 0
    """Leading columns that came from a kept prefix (the layout is then [prefix | padding | rest])."""
    logits: torch.Tensor | None = None
    """(g, vocab): the last column's logits, once every column has run."""


def begin_prefill(
    model: PreTrainedModel, rows: list[T], inputs: Sequence[Sequence[int]], pad_id: int, prefix: Prefix | None = None
) -> Prefilling[T]:
    """The prompts of `rows` (one token list each), laid out for `prefill_step`; no model work yet.

    Identical prompts are run once and their cache rows copied at `finish_prefill`: the `n` choices of one request,
    or clients sending the same prompt together, share one prefill. With `prefix` (a kept prefix every prompt starts
    with, `prefix_cache.py`), the cache starts from its keys and values and only the rest of each prompt runs.
    """
    device = next(model.parameters()).device
    unique: dict[tuple[int, ...], int] = {}
    source = [unique.setdefault(tuple(x), len(unique)) for x in inputs]
    prompts, cache = list(unique), new_cache(model.config)
    if prefix is None:
        ids, mask = left_pad(prompts, pad_id)
        return Prefilling(list(rows), prompts, source, ids.to(device), mask.to(device), cache)
    n, g = len(prefix.tokens), len(prompts)
    rest, rest_mask = left_pad([x[n:] for x in prompts], pad_id)
    ids = torch.cat([torch.tensor(prefix.tokens, dtype=torch.long).expand(g, n), rest], dim=1)
    mask = torch.cat([torch.ones((g, n), dtype=torch.long), rest_mask], dim=1)
    for layer, (k, v) in enumerate(prefix.kv):
        cache.update(k.expand(g, -1, -1, -1).contiguous(), v.expand(g, -1, -1, -1).contiguous(), layer)
    return Prefilling(list(rows), prompts, source, ids.to(device), mask.to(device), cache, done=n, reused=n)


def prefix_kv(p: Prefilling[Any], prompt: int, n: int) -> KV:
    """The keys and values of the first `n` tokens of unique prompt `prompt`, from a prefill laid out without a kept
    prefix (left padding only, so its real tokens are contiguous)."""
    assert not p.reused, "a prefill that started from a kept prefix has padding inside its prompts"
    start = int(p.mask[prompt].argmax())  # the first real column
    layers: list[Any] = list(p.cache.layers)
    return [(x.keys[prompt : prompt + 1, :, start : start + n], x.values[prompt : prompt + 1, :, start : start + n])
            for x in layers]  # fmt: skip


@torch.inference_mode()
def prefill_step(model: PreTrainedModel, p: Prefilling[Any], budget: int | None = None) -> bool:
    """Run the next columns of the prompts, about `budget` tokens (padding included; None: all that remain), at
    least one column; whether every column has run.

    Chunked prefill (vLLM's): a long prompt's forward is split so the requests already decoding get a step between
    its chunks instead of waiting for the whole of it. Each chunk attends to the cache of the columns before it,
    and positions come from the whole mask, so the result is the whole prompt's up to float rounding.
    """
    width = p.ids.shape[1]
    end = width if budget is None else min(width, p.done + max(1, budget // p.ids.shape[0]))
    positions = (p.mask.cumsum(-1) - 1).clamp(min=0)  # (g, L): padding stays at 0, real tokens count up
    out = model(
        input_ids=p.ids[:, p.done : end],
        attention_mask=p.mask[:, :end],  # the cached columns and this chunk's
        position_ids=positions[:, p.done : end],
        cache=p.cache,  # transformers 5.24 name (was past_key_values)
        use_cache=True,
        logits_to_keep=1,
    )
    p.done = end
    if end < width:
        return False
    p.logits = out.logits[:, -1, :]
    return True


@torch.inference_mode()
def finish_prefill(p: Prefilling[T], pick: Pick) -> Batch[T]:
    """A fully run prefill as a batch whose `next` holds each row's first generated token (each row picks its own
    from the shared logits: its own sampler and seed)."""
    assert p.logits is not None, "finish_prefill before the last prefill_step"
    g, logits = p.ids.shape[0], p.logits
    placeholder = torch.zeros((g, 1), dtype=torch.long, device=p.ids.device)  # `next` is set below
    batch: Batch[T] = Batch(list(p.rows[:g]), p.cache, p.mask, placeholder)
    if g < len(p.rows):
        batch.select(p.source)  # copies each shared prompt's cache row to every row that sent it
        logits = logits.index_select(0, torch.tensor(p.source, device=logits.device))
        batch.rows = list(p.rows)
    batch.next = pick(logits, batch.rows).view(-1, 1)  # (g, 1)
    return batch


def prefill(
    model: PreTrainedModel, rows: list[T], inputs: Sequence[Sequence[int]], pad_id: int, pick: Pick
) -> Batch[T]:
    """Run the prompts of `rows` whole, in one forward, and return them as a batch whose `next` holds their first
    generated tokens."""
    p = begin_prefill(model, rows, inputs, pad_id)
    prefill_step(model, p)
    return finish_prefill(p, pick)


@torch.inference_mode()
def decode(model: PreTrainedModel, batch: Batch[Any], pick: Pick) -> torch.Tensor:
    """One decode step: feed each row's `next` token, grow the mask by one column, and return (and keep
    in `batch.next`) the (B,) tokens that follow. The cache is updated in place by the forward."""
    mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)  # (B, L + 1)
    positions = batch.mask.sum(-1, keepdim=True)  # (B, 1): each row's count of real tokens so far
    if llama_decode.supports(model):  # the fused int8 Llama: the same logits without transformers' bookkeeping
        logits = llama_decode.decode_logits(model, batch.next, mask, positions, batch.cache)
    else:  # the mask offset comes from the cache's length
        out = model(
            input_ids=batch.next, attention_mask=mask, position_ids=positions, cache=batch.cache, use_cache=True
        )
        logits = out.logits[:, -1, :]
    batch.mask = mask
    tokens = pick(logits, batch.rows)
    batch.next = tokens.view(-1, 1)
    return tokens


def warm_up(model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_id: int, pick: Pick, steps: int = 3) -> None:
    """Exercise the scheduler's path once: prefill each prompt, merge them (left-padding the shorter),
    decode `steps` times, select the first row (trimming padding), and decode once more."""
    device = next(model.parameters()).device
    batch: Batch[int] = Batch.empty(device)
    for i, prompt in enumerate(prompts):
        batch.merge(prefill(model, [i], [prompt], pad_id, pick))
    for _ in range(steps):
        decode(model, batch, pick)
    batch.select([0])
    decode(model, batch, pick)
