"""data.datasets: document-level split, query/question/answer text, caps and byte-identical outputs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from core.config import Params
from data.datasets import DatasetError, build_datasets, query_text, split_documents
from data.ingest import write_parquet


def _chunks(n_docs: int, per_doc: int = 3) -> pl.DataFrame:
    rows = []
    for d in range(n_docs):
        doc_id = f"{d:016x}"
        for p in range(per_doc):
            rows.append({"chunk_id": f"{doc_id}-{p:05d}", "doc_id": doc_id, "source": f"m{d}.md", "title": f"mod{d}",
                         "heading": "" if p == 0 else f"FUNCTIONS > f{p % 2}", "position": p,
                         "text": f"Function {p} of mod{d} does things. It returns a value. More detail here.",
                         "n_tokens": 12})  # fmt: skip
    return pl.DataFrame(rows)


def test_text_builders() -> None:
    assert query_text("json", "FUNCTIONS > dumps") == "json: dumps"
    assert query_text("json", "") == "json"


def test_split_is_seeded_stable_and_never_empty() -> None:
    ids = [f"{i:016x}" for i in range(200)]
    train, held = split_documents(ids, 0.15, seed=42)
    assert not set(train) & set(held) and len(train) + len(held) == 200
    assert 15 <= len(held) <= 45
    assert split_documents(list(reversed(ids)), 0.15, seed=42) == (train, held)
    assert split_documents(ids, 0.15, seed=7) != (train, held)
    t2, h2 = split_documents(ids[:2], 0.01, seed=42)
    assert len(t2) == 1 and len(h2) == 1
    with pytest.raises(DatasetError, match="at least 2 documents"):
        split_documents(ids[:1], 0.15, seed=42)


def _questions(chunks: pl.DataFrame) -> pl.DataFrame:
    """One question per chunk, about its first sentence (data/questions.py's columns)."""
    rows = [{"query_id": f"q-{r['chunk_id']}", "query": f"What does function {r['position']} of {r['title']} do?",
             "doc_id": r["doc_id"], "source": r["source"], "sentence": r["text"].split(". ")[0] + ".",
             "start": 0, "end": 1} for r in chunks.iter_rows(named=True)]  # fmt: skip
    return pl.DataFrame(rows)


def test_build_datasets_shapes_and_caps(tmp_path: Path) -> None:
    p = Params.model_validate({"data": {"datasets": {"eval_fraction": 0.3, "max_eval_queries": 2, "max_chat_train": 4,
                                                      "max_chat_eval": 1, "max_embed_pairs": 5}}})  # fmt: skip
    qs = _questions(_chunks(10))
    frames = build_datasets(_chunks(10), p, qs, qs)
    assert frames["embed_train"].columns == ["anchor", "positive", "doc_id"] and frames["embed_train"].height == 5
    assert frames["embed_eval_queries"].columns == ["query_id", "query", "relevant_ids"]
    assert frames["embed_eval_queries"].height == 2
    assert frames["embed_eval_corpus"].columns == ["chunk_id", "text"]
    assert frames["chat_train"].columns == [
        "query_id",
        "question",
        "contexts",
        "answer",
        "doc_id",
        "chunk_id",
        "answerable",
        "format",
    ]
    assert frames["chat_train"].height == 4 and frames["chat_eval"].height == 1
    q = frames["embed_eval_queries"].row(0, named=True)
    corpus = dict(frames["embed_eval_corpus"].iter_rows())
    assert all(r in corpus for r in q["relevant_ids"])
    for row in frames["chat_train"].iter_rows(named=True):  # details: tests/code/test_grounded.py
        assert row["answer"] and len(row["contexts"]) == p.data.datasets.chat_passages
    # byte-identical files from the same input
    again = build_datasets(_chunks(10).sample(fraction=1.0, shuffle=True, seed=1), p, qs.reverse(), qs)
    for name, df in frames.items():
        write_parquet(df, tmp_path / f"a_{name}.parquet")
        write_parquet(again[name], tmp_path / f"b_{name}.parquet")
        assert (tmp_path / f"a_{name}.parquet").read_bytes() == (tmp_path / f"b_{name}.parquet").read_bytes()
