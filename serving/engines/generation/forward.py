"""The two forward passes of the scheduler, as small typed steps (gpt-fast's `prefill` / `decode_one_token`).

    prefill   one left-padded forward over new prompts -> their first tokens and a new `Batch`
    decode    one forward of every row's `next` token against the shared cache -> the following tokens

Both take a `pick` function ((B, vocab) logits, the rows -> (B,) token ids; the engine passes the
sampling chain) and leave the chosen tokens in `batch.next`. `warm_up` runs exactly these steps, with
a merge and a select, so the first request does not pay for lazy initialisation on any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from transformers import DynamicCache, PreTrainedModel

from serving.engines.generation.batch import Batch, left_pad

T = TypeVar("T")
Pick = Callable[[torch.Tensor, list[Any]], torch.Tensor]
"""(B, vocab) logits and the batch's rows -> (B,) long token ids."""


@torch.inference_mode()
def prefill(
    model: PreTrainedModel, rows: list[T], inputs: Sequence[Sequence[int]], pad_id: int, pick: Pick
) -> Batch[T]:
    """Run the prompts of `rows` (one token list each) and return them as a batch whose `next` holds
    their first generated tokens.

    Identical prompts are run once and their cache rows copied (`Batch.select` with repeated indices): the
    `n` choices of one request, or clients sending the same prompt together, share one prefill. Each row
    still picks its own first token from the shared logits (its own sampler and seed).
    """
    device = next(model.parameters()).device
    unique: dict[tuple[int, ...], int] = {}
    source = [unique.setdefault(tuple(x), len(unique)) for x in inputs]
    ids, mask = left_pad(list(unique), pad_id)
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),  # (g, L): padding stays at 0, real tokens count up
        cache=cache,  # transformers 5.24 name (was past_key_values)
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1, :]
    placeholder = torch.zeros((len(unique), 1), dtype=torch.long, device=device)  # `next` is set below
    batch: Batch[T] = Batch(list(rows[: len(unique)]), cache, mask, placeholder)
    if len(unique) < len(rows):
        batch.select(source)  # copies each shared prompt's cache row to every row that sent it
        logits = logits.index_select(0, torch.tensor(source, device=logits.device))
        batch.rows = list(rows)
    batch.next = pick(logits, batch.rows).view(-1, 1)  # (g, 1)
    return batch


@torch.inference_mode()
def decode(model: PreTrainedModel, batch: Batch[Any], pick: Pick) -> torch.Tensor:
    """One decode step: feed each row's `next` token, grow the mask by one column, and return (and keep
    in `batch.next`) the (B,) tokens that follow. The cache is updated in place by the forward."""
    mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)  # (B, L + 1)
    out = model(
        input_ids=batch.next,
        attention_mask=mask,
        position_ids=batch.mask.sum(-1, keepdim=True),  # (B, 1): each row's count of real tokens so far
        cache=batch.cache,  # the mask offset comes from the cache's length
        use_cache=True,
    )
    batch.mask = mask
    tokens = pick(out.logits[:, -1, :], batch.rows)
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
