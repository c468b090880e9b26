"""Held-out questions (data/questions.py) and per-document retrieval scoring (evaluation/retrieval.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from core.config import QuestionParams
from data.questions import as_query, build_questions, mask_documents, sentences, training_pairs
from evaluation.retrieval import document_metrics, naive_chunks
from training.embedder import read_pairs

CFG = QuestionParams(min_words=5, max_words=30, min_plain_fraction=0.8, max_per_document=2, max_questions=10)

PYDOC = """# abc

## NAME

abc - Abstract Base Classes (ABCs) according to PEP 3119.

register(cls, subclass)
    Register a virtual subclass of an abstract base class.

    Returns the subclass, to allow usage as a class decorator.

    x = ABCMeta('name', (), {})
    print(x)

- a list item that is a sentence of plain words.
"""


def test_sentences_come_from_prose_with_spans_into_the_text() -> None:
    found = list(sentences(PYDOC))
    texts = [s.text for s in found]
    assert "Register a virtual subclass of an abstract base class." in texts
    assert "Returns the subclass, to allow usage as a class decorator." in texts
    assert not any(t.startswith(("#", "-", "a list")) for t in texts)  # headings and lists are not prose
    assert "register(cls, subclass)" in texts and as_query("register(cls, subclass)", CFG) is None  # a signature
    for s in found:
        assert " ".join(PYDOC[s.start : s.end].split()) == s.text


@pytest.mark.parametrize(
    ("sentence", "query"),
    [
        ("Register a virtual subclass of a class.", "How do I register a virtual subclass of a class?"),
        ("Returns the subclass, to allow usage as a decorator.", "Returns the subclass, to allow usage as a decorator"),
        ("Too short here.", None),
        ("The value of sys.maxsize is the largest integer here.", None),  # dotted identifier: code
        ("Call foo_bar() with the right arguments every time.", None),
        ("FORM AIFC SSND COMM MARK FVER are the chunk names used.", None),  # not plain words
        ("no capital letter at the start of this sentence.", None),
        ("A sentence that ends without a full stop at all", None),
    ],
)  # fmt: skip
def test_only_plain_language_sentences_become_queries(sentence: str, query: str | None) -> None:
    assert as_query(sentence, CFG) == query


def _docs() -> pl.DataFrame:
    shared = "Create and return a new object of the requested type here."
    texts = {
        "d1": f"# one\n\nOpen the file and read every line of it.\n\n{shared}\n\nThe reader keeps its place.",
        "d2": f"# two\n\n{shared}\n\nSockets carry bytes between processes.\n\nClose the socket when done.",
        "d3": "# three\n\nJust code.\n\n    x = 1\n",
    }
    ids = list(texts)
    return pl.DataFrame({"doc_id": ids, "source": ids, "title": ids, "text": list(texts.values())})


def test_questions_are_unambiguous_capped_and_deterministic() -> None:
    docs = _docs()
    q = build_questions(docs, CFG, seed=1)
    assert q.height == q["query"].n_unique() and q.height > 0
    assert not q.filter(pl.col("sentence").str.contains("Create and return")).height  # in two documents
    assert q.group_by("doc_id").len()["len"].max() <= CFG.max_per_document  # type: ignore[operator]
    assert q.equals(build_questions(docs, CFG, seed=1))
    assert set(q["doc_id"]) <= {"d1", "d2"}


def test_masking_cuts_each_question_sentence_out_of_its_document() -> None:
    docs = _docs()
    q = build_questions(docs, CFG, seed=1)
    masked = mask_documents(docs, q)
    by_id = dict(zip(masked["doc_id"], masked["text"], strict=True))
    for r in q.iter_rows(named=True):
        assert r["sentence"] not in " ".join(by_id[r["doc_id"]].split())
    untouched = docs.filter(~pl.col("doc_id").is_in(q["doc_id"].to_list()))
    assert untouched.select("doc_id", "text").equals(
        masked.filter(pl.col("doc_id").is_in(untouched["doc_id"].to_list())).select("doc_id", "text")
    )


def test_document_metrics_by_rank() -> None:
    rankings = [["a", "b"], ["x", "b", "c"], ["x", "y"], []]
    m = document_metrics(rankings, ["a", "b", "z", "q"], k_values=[1, 5, 10])
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.5 and m["recall@10"] == 0.5
    assert m["mrr@10"] == round((1 + 0.5) / 4, 4)
    assert m["ndcg@10"] == round((1 + 1 / 1.584962500721156) / 4, 4)
    with pytest.raises(ValueError, match="no queries"):
        document_metrics([], [], [1])


def test_naive_chunks_are_fixed_windows_with_overlap() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(2500))
    chunks = naive_chunks(pl.DataFrame({"doc_id": ["d"], "text": [text]}), size_chars=1000, overlap_chars=200)
    assert chunks["text"].to_list() == [text[0:1000], text[800:1800], text[1600:2500]]
    assert chunks["chunk_id"].n_unique() == 3
    short = naive_chunks(pl.DataFrame({"doc_id": ["s"], "text": ["tiny"]}), 1000, 200)
    assert short["text"].to_list() == ["tiny"]


def test_training_pairs_take_the_chunk_that_held_the_sentence_without_it() -> None:
    questions = pl.DataFrame(
        {
            "query": ["How do I open the file?", "Straddles two chunks"],
            "doc_id": ["d1", "d1"],
            "sentence": ["Open the file.", "This sentence spans chunks."],
        }
    )
    chunks = pl.DataFrame(
        {
            "doc_id": ["d1", "d1", "d2"],
            "text": ["Intro line.\nOpen the   file.\nThen read it.", "This sentence", "Open the file."],
        }
    )
    pairs = training_pairs(questions, chunks)
    assert pairs.to_dicts() == [
        {"anchor": "How do I open the file?", "positive": "Intro line. Then read it.", "doc_id": "d1"}
    ]


def test_embedder_training_reads_the_chosen_pair_kinds(tmp_path: Path) -> None:
    files = {}
    for kind in ("questions", "headings"):
        files[kind] = tmp_path / f"{kind}.parquet"
        pl.DataFrame({"anchor": [f"{kind} a"], "positive": ["p"], "doc_id": ["d"]}).write_parquet(files[kind])
    assert read_pairs(("questions",), files)["anchor"].to_list() == ["questions a"]
    both = read_pairs(("questions", "headings"), files)
    assert both["kind"].to_list() == ["questions", "headings"] and both.columns == ["anchor", "positive", "kind"]
