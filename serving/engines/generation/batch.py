"""The running batch as one value: KV cache, attention mask, each row's next token, and the rows.

Shapes: cache keys/values per layer (B, kv_heads, L, head_dim); `mask` (B, L) long with 1 for real
tokens (left padding is 0); `next` (B, 1) long holds each row's newest token, emitted but not yet in the
cache. Rows of different lengths share one cache because positions come from the mask (a row's position
is its count of real tokens), so padding never shifts RoPE.

An empty batch is an ordinary value (no rows, a (0, 0) mask, an empty cache): the scheduler merges into
it and selects from it without checking for None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    """Rows decoded together, with the state their next forward needs (updated in place)."""

    rows: list[T]
    cache: DynamicCache
    mask: torch.Tensor
    """(B, L) long: 1 where the cache holds a real token, 0 for left padding."""
    next: torch.Tensor
    """(B, 1) long: each row's newest token, not yet in the cache."""

    @classmethod
    def empty(cls, device: torch.device | str) -> Batch[T]:
        """A batch with no rows, on `device`."""
        return cls(
            [],
            DynamicCache(),
            torch.zeros((0, 0), dtype=torch.long, device=device),
            torch.zeros((0, 1), dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return len(self.rows)

    def merge(self, other: Batch[T]) -> None:
        """Append `other`'s rows after this batch's (`other` is consumed).

        The shorter side is left-padded (zero keys/values, mask 0) to the longer one's length, so every
        row's newest token stays in the last column.
        """
        if not other.rows:
            return
        if not self.rows:
            self.rows, self.cache, self.mask, self.next = list(other.rows), other.cache, other.mask, other.next
            return
        length = max(self.mask.shape[1], other.mask.shape[1])
        pad_mine, pad_theirs = length - self.mask.shape[1], length - other.mask.shape[1]
        mine: list[Any] = list(self.cache.layers)  # DynamicLayer: .keys/.values (B, H, L, D)
        theirs: list[Any] = list(other.cache.layers)
        for a, b in zip(mine, theirs, strict=True):
            a.keys = torch.cat([_lpad(a.keys, pad_mine), _lpad(b.keys, pad_theirs)], dim=0)
            a.values = torch.cat([_lpad(a.values, pad_mine), _lpad(b.values, pad_theirs)], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (pad_mine, 0)), F.pad(other.mask, (pad_theirs, 0))], dim=0)
        self.next = torch.cat([self.next, other.next], dim=0)
        self.rows.extend(other.rows)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows at indices `keep` (in that order); trim leading columns that are padding in
        every remaining row (they would cost attention for nothing once the longest row has left)."""
        if not keep:
            empty: Batch[T] = Batch.empty(self.mask.device)
            self.rows, self.cache, self.mask, self.next = empty.rows, empty.cache, empty.mask, empty.next
            return
        idx = torch.tensor(list(keep), device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        first = int(mask.any(0).int().argmax())  # first column holding a real token in some row
        layers: list[Any] = list(self.cache.layers)
        for layer in layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, first:, :]
            layer.values = layer.values.index_select(0, idx)[:, :, first:, :]
        self.mask = mask[:, first:]
        self.next = self.next.index_select(0, idx)
        self.rows = [self.rows[i] for i in keep]


class SlackLayer(DynamicLayer):
    """transformers' `DynamicLayer` with room to grow: keys and values are views into buffers longer than the
    sequence, so a decode step writes its one new position in place instead of copying the whole layer
    (`torch.cat`, the stock layer's way). Measured (`python -m benchmarks.profile_batch_decode`: int8 chat, 4 rows
    of ~600 cached tokens, 2 threads): 46.0 ms a decode step with the stock layer, 42.1 with this one, the same
    tokens. When the buffer is full, or the
    batch replaced the tensors (`Batch.merge` / `select`), the layer copies them into a new buffer with a quarter
    more room (64 positions at least), so the copying is amortised over many steps."""

    _key_room: torch.Tensor | None = None
    _value_room: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        cached_keys, cached_values = self.keys, self.values
        assert cached_keys is not None and cached_values is not None
        n, new = (cached_keys.shape[-2] if cached_keys.numel() else 0), key_states.shape[-2]
        room = self._key_room
        in_place = (
            room is not None
            and n > 0
            and cached_keys.data_ptr() == room.data_ptr()  # still a view of the buffer (not replaced by the batch)
            and cached_keys.shape[:2] == room.shape[:2]
            and n + new <= room.shape[-2]
        )
        if not in_place:
            rows, heads, _, _ = key_states.shape
            length = n + new + max(64, (n + new) // 4)
            keys = key_states.new_empty((rows, heads, length, key_states.shape[-1]))
            values = value_states.new_empty((rows, value_states.shape[1], length, value_states.shape[-1]))
            if n:
                keys[:, :, :n] = cached_keys
                values[:, :, :n] = cached_values
            self._key_room, self._value_room = keys, values
        key_room, value_room = self._key_room, self._value_room
        assert key_room is not None and value_room is not None
        key_room[:, :, n : n + new] = key_states
        value_room[:, :, n : n + new] = value_states
        keys_now, values_now = key_room[:, :, : n + new], value_room[:, :, : n + new]
        self.keys, self.values = keys_now, values_now
        return keys_now, values_now


def new_cache(config: PretrainedConfig) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers are `SlackLayer`s (others stay as transformers
    makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [SlackLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def left_pad(inputs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids, mask), both (B, longest) long, padded on the left so each row ends in the last column."""
    longest = max(len(x) for x in inputs)
    ids = torch.full((len(inputs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), longest), dtype=torch.long)
    for i, x in enumerate(inputs):
        ids[i, longest - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        mask[i, longest - len(x) :] = 1
    return ids, mask


def _lpad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad a (B, H, L, D) cache tensor with n zero positions along L."""
    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:-2], n, t.shape[-1])), t], dim=-2)
