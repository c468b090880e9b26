"""data.grounded: question -> grounded, cited answer examples (the chat model's fine-tuning data)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from core.citations import clean
from core.config import Params
from core.io import write_parquet
from core.prompts import NOT_IN_CONTEXT
from data.datasets import build_datasets, split_documents
from data.grounded import grounded_examples, holders

TOPICS = ["files", "sockets", "threads", "queues", "strings", "numbers", "dates", "paths", "json", "regexes"]


def _chunks() -> pl.DataFrame:
    rows = []
    for d, topic in enumerate(TOPICS):
        doc_id = f"{d:016x}"
        for p in range(3):
            text = (f"Intro to {topic} part {p}.\n\nThe {topic} helper number {p} reads\n  the {topic} value "
                    f"carefully. It also writes {topic} records.")  # fmt: skip
            rows.append({"chunk_id": f"{doc_id}-{p:05d}", "doc_id": doc_id, "source": f"{topic}.md",
                         "title": topic, "heading": "", "position": p, "text": text, "n_tokens": 20})  # fmt: skip
    return pl.DataFrame(rows)


def _questions(chunks: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for r in chunks.iter_rows(named=True):
        topic, p = r["title"], r["position"]
        sentence = f"The {topic} helper number {p} reads the {topic} value carefully."  # flattened, spans a newline
        rows.append({"query_id": f"q-{r['chunk_id']}", "query": f"How does {topic} helper {p} read?",
                     "doc_id": r["doc_id"], "source": r["source"], "sentence": sentence,
                     "start": 0, "end": 1})  # fmt: skip
    rows.append({"query_id": "q-straddles", "query": "Nowhere?", "doc_id": chunks["doc_id"][0], "source": "x",
                 "sentence": "A sentence no chunk holds whole.", "start": 0, "end": 1})  # fmt: skip
    return pl.DataFrame(rows)


def test_right_passage_holds_the_sentence_and_is_cited() -> None:
    chunks = _chunks()
    df = grounded_examples(_questions(chunks), chunks, 3, 0.0, 100, seed=42)
    assert df.height == chunks.height  # the straddling question is dropped
    text_of = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    doc_of = dict(zip(chunks["text"], chunks["doc_id"], strict=True))
    positions = set()
    for r in df.iter_rows(named=True):
        assert r["answerable"] and len(r["contexts"]) == 3
        _, cited = clean(r["answer"], len(r["contexts"]))
        assert len(cited) == 1
        right = r["contexts"][cited[0] - 1]
        assert right == text_of[r["chunk_id"]]
        assert " ".join(r["answer"].rsplit(" [", 1)[0].split()) in " ".join(right.split())
        others = [c for i, c in enumerate(r["contexts"]) if i != cited[0] - 1]
        docs = [doc_of[c] for c in others]
        assert r["doc_id"] not in docs and len(set(docs)) == len(docs)  # other documents, one passage each
        positions.add(cited[0])
    assert positions == {1, 2, 3}  # the right passage's position varies


def test_unanswerable_fraction_and_fixed_answer() -> None:
    chunks = _chunks()
    df = grounded_examples(_questions(chunks), chunks, 3, 0.2, 100, seed=42)
    no = df.filter(~pl.col("answerable"))
    assert no.height == round(0.2 * df.height)
    doc_of = dict(zip(chunks["text"], chunks["doc_id"], strict=True))
    for r in no.iter_rows(named=True):
        assert r["answer"] == NOT_IN_CONTEXT and len(r["contexts"]) == 3
        assert all(doc_of[c] != r["doc_id"] for c in r["contexts"])


def test_cap_and_determinism(tmp_path: Path) -> None:
    chunks = _chunks()
    a = grounded_examples(_questions(chunks), chunks, 2, 0.25, 7, seed=42)
    b = grounded_examples(_questions(chunks).reverse(), chunks.reverse(), 2, 0.25, 7, seed=42)
    assert a.height == 7
    write_parquet(a, tmp_path / "a.parquet")
    write_parquet(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert not a.equals(grounded_examples(_questions(chunks), chunks, 2, 0.25, 7, seed=7))


def test_holders_match_flattened_text() -> None:
    chunks = _chunks()
    found = holders(_questions(chunks), chunks)
    assert "q-straddles" not in found["query_id"].to_list()
    assert (found["chunk_id"] == found["query_id"].str.strip_prefix("q-")).all()


def test_no_held_out_document_reaches_chat_train() -> None:
    chunks = _chunks()
    qs = _questions(chunks)
    p = Params.model_validate({"data": {"datasets": {"eval_fraction": 0.3, "max_chat_eval": 100}}})
    train_ids, held_ids = split_documents(chunks["doc_id"].to_list(), 0.3, p.seed)
    # every question offered on both sides: build_datasets keeps each on its own document's side
    frames = build_datasets(chunks, p, qs, qs)
    held_texts = set(chunks.filter(pl.col("doc_id").is_in(held_ids))["text"])
    train = frames["chat_train"]
    assert train.height and set(train["doc_id"]) <= set(train_ids)
    assert not set(train["contexts"].explode()) & held_texts
    assert set(frames["chat_eval"]["doc_id"]) <= set(held_ids)
    assert set(frames["chat_eval"]["contexts"].explode()) <= held_texts


def test_the_reference_answer_adds_the_sentence_that_follows_in_the_source() -> None:
    from data.grounded import with_next_sentence

    text = (
        "Intro.\nThe function returns a list\nof items. It raises ValueError when the list is empty.\n\n"
        "## API\nx = f(1)."
    )
    assert with_next_sentence("The function returns a list of items.", text) == (
        "The function returns a list of items. It raises ValueError when the list is empty."
    )
    assert with_next_sentence("It raises ValueError when the list is empty.", text) == (
        "It raises ValueError when the list is empty."  # a heading and code follow: nothing added
    )
    assert with_next_sentence("Not in the text at all.", text) == "Not in the text at all."


def test_a_seeded_share_of_answerable_examples_teach_tool_calls() -> None:
    chunks = _chunks()
    df = grounded_examples(_questions(chunks), chunks, 3, 0.3, 100, seed=42, tool_fraction=0.5)
    again = grounded_examples(_questions(chunks), chunks, 3, 0.3, 100, seed=42, tool_fraction=0.5)
    assert df.equals(again)
    formats = df["format"].to_list()
    assert set(formats) == {"rag", "tool_call", "tool_answer"}
    assert df.filter(~pl.col("answerable"))["format"].unique().to_list() == ["rag"]  # NOT_IN_CONTEXT stays RAG
    assert grounded_examples(_questions(chunks), chunks, 3, 0.3, 100, seed=42)["format"].unique().to_list() == ["rag"]
