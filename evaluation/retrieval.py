"""Retrieval quality of an embedder on the held-out queries: recall@k, accuracy@k, MRR@10, nDCG@10.

Uses sentence-transformers' InformationRetrievalEvaluator (cosine similarity, exact search), so
the numbers are the ones its users know.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator


def retrieval_metrics(
    model: SentenceTransformer,
    queries: pl.DataFrame,
    corpus: pl.DataFrame,
    k_values: Sequence[int],
    batch_size: int = 64,
) -> dict[str, float]:
    """Score `model` retrieving `corpus` chunks for `queries`.

    Args:
        queries: columns `query_id`, `query`, `relevant_ids` (list of chunk ids).
        corpus: columns `chunk_id`, `text`.
        k_values: cut-offs for recall@k and accuracy@k.

    Returns:
        `{"recall@1": ..., "accuracy@1": ..., "mrr@10": ..., "ndcg@10": ...}`.
    """
    ks = sorted(set(k_values))
    evaluator = InformationRetrievalEvaluator(
        queries=dict(zip(queries["query_id"], queries["query"], strict=True)),
        corpus=dict(zip(corpus["chunk_id"], corpus["text"], strict=True)),
        relevant_docs={q: set(r) for q, r in zip(queries["query_id"], queries["relevant_ids"], strict=True)},
        accuracy_at_k=ks,
        precision_recall_at_k=ks,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[10],
        batch_size=batch_size,
        show_progress_bar=True,
        write_csv=False,
        name="heldout",
    )
    raw = evaluator(model)
    out: dict[str, float] = {}
    for key, value in raw.items():
        metric = key.split("_")[-1]  # "heldout_cosine_recall@10" -> "recall@10"
        if "@" in metric and not metric.startswith(("precision", "map")):
            out[metric] = round(float(value), 4)
    return out
