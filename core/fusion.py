"""Combining ranked lists: weighted reciprocal rank fusion (Cormack et al., SIGIR 2009).

Dense (cosine) and BM25 scores live on unrelated scales, so the lists are fused by rank, not score:
an item at rank r (1-based) in list i adds `weights[i] / (k + r)`. Used by evaluation (the `hybrid`
rows of evaluate.json) and by the server's `mode="hybrid"`, so the measured and served rankings agree.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[T]], weights: Sequence[float], k: int = 60
) -> list[tuple[T, float]]:
    """Fuse best-first lists into one, best first, as `(item, fused score)`.

    Ties keep the order in which items were first seen (the first list's order first), so fusing one
    list with itself, or with an empty list, returns it unchanged.

    Raises:
        ValueError: a different number of weights and lists, a negative weight, or k < 1.
    """
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0 (got {list(weights)})")
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    scores: dict[T, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    # sorted() is stable: equal scores stay in first-seen order
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
