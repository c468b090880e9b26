"""Corpus and dataset invariants on a small end-to-end run: ingest -> chunk -> questions -> datasets.

No leakage between train and held-out documents, no empty chunk, unique chunk ids, every relevant
id in the eval corpus, and the whole chain deterministic.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from core.config import Params
from data.chunk import chunk_documents
from data.datasets import build_datasets
from data.ingest import ingest
from data.questions import build_questions, split

PARAMS = Params.model_validate(
    {"data": {"chunk": {"chunk_tokens": 48, "overlap_tokens": 8, "min_chunk_tokens": 4},
              "datasets": {"eval_fraction": 0.3}}}
)  # fmt: skip


def _write_corpus(root: Path) -> None:
    for i in range(12):
        body = "\n\n".join(
            f"## Part {j}\n\n"
            + " ".join(f"Module {i} part {j} explains feature {k} in detail." for k in range(6 + i % 4))
            for j in range(3)
        )
        (root / f"mod{i:02d}.md").write_text(f"# module{i}\n\nOverview of module {i}.\n\n{body}\n")
    (root / "dup.md").write_text((root / "mod00.md").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from core.specs import resolve

    return AutoTokenizer.from_pretrained(resolve(PARAMS.models.embedder_base))


def _run(root: Path, tokenizer) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    docs, _ = ingest(root, PARAMS.data.ingest)
    chunks = chunk_documents(docs, tokenizer, PARAMS.data.chunk)
    # the synthetic sentences hold numbers ("Module 3 part 1 ..."): allow them as plain enough
    cfg = PARAMS.data.questions.model_copy(update={"min_plain_fraction": 0.5})
    train, held = split(docs, chunks, PARAMS)
    questions = build_questions(train, cfg, PARAMS.seed), build_questions(held, cfg, PARAMS.seed)
    return chunks, build_datasets(chunks, PARAMS, *questions)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root)
    return _run(root, tokenizer)


def test_no_empty_chunks_and_unique_ids(pipeline) -> None:
    chunks, _ = pipeline
    assert chunks.height > 12
    assert chunks["text"].str.strip_chars().str.len_chars().min() > 0
    assert chunks["n_tokens"].min() >= PARAMS.data.chunk.min_chunk_tokens
    assert chunks["chunk_id"].n_unique() == chunks.height
    assert chunks["source"].n_unique() == 12  # dup.md dropped as a duplicate of mod00.md


def test_no_leakage(pipeline) -> None:
    _, f = pipeline
    held = set(f["embed_eval_corpus"]["chunk_id"].str.slice(0, 16)) | set(f["chat_eval"]["doc_id"])
    train = set(f["embed_train"]["doc_id"]) | set(f["chat_train"]["doc_id"])
    assert held and train and not held & train
    assert f["chat_train"].height and f["chat_eval"].height
    train_texts = set(f["embed_train"]["positive"]) | set(f["chat_train"]["contexts"].explode())
    assert not train_texts & set(f["embed_eval_corpus"]["text"])


def test_relevant_ids_exist_in_eval_corpus(pipeline) -> None:
    _, f = pipeline
    corpus = set(f["embed_eval_corpus"]["chunk_id"])
    relevant = f["embed_eval_queries"]["relevant_ids"].explode().to_list()
    assert relevant and set(relevant) <= corpus
    assert f["embed_eval_queries"]["query_id"].n_unique() == f["embed_eval_queries"].height
    assert f["embed_eval_queries"]["query"].n_unique() == f["embed_eval_queries"].height


def test_deterministic(tmp_path: Path, pipeline, tokenizer) -> None:
    _write_corpus(tmp_path)
    chunks, frames = _run(tmp_path, tokenizer)
    assert chunks.equals(pipeline[0])
    for name, df in frames.items():
        assert df.equals(pipeline[1][name]), name
