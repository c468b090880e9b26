"""data.chunk: sections by heading, token budgets, overlap, ids and positions (real MiniLM tokenizer)."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from core.config import ChunkParams, Params
from data.chunk import chunk_documents, count_tokens, split_sections
from data.ingest import doc_id_of


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from core.specs import resolve

    return AutoTokenizer.from_pretrained(resolve(Params().models.embedder_base))


def _docs(*pairs: tuple[str, str]) -> pl.DataFrame:
    rows = [{"doc_id": doc_id_of(t), "source": s, "title": t.split("\n")[0].lstrip("# "), "text": t} for s, t in pairs]
    return pl.DataFrame(rows)


def test_split_sections_heading_paths_and_fences() -> None:
    text = (
        "# json\n\nintro\n\n## FUNCTIONS\n\n### dumps\n\nSerialize.\n\n```\n# not a heading\n```\n\n## DATA\n\nx = 1\n"
    )
    secs = split_sections(text, title="json")
    assert [(s.heading, s.text.strip()) for s in secs] == [
        ("", "intro"),
        ("FUNCTIONS > dumps", "Serialize.\n\n```\n# not a heading\n```"),
        ("DATA", "x = 1"),
    ]  # the empty FUNCTIONS section yields nothing; the title heading is not in the path


def test_chunks_respect_budget_overlap_and_sections(tokenizer) -> None:
    long_para = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(120))
    usage = "Short usage section with enough words to keep."
    text = f"# guide\n\n## Install\n\n{long_para}\n\n## Usage\n\n{usage}\n\n## Tiny\n\nok\n"
    cp = ChunkParams(chunk_tokens=64, overlap_tokens=16, min_chunk_tokens=4)
    df = chunk_documents(_docs(("guide.md", text)), tokenizer, cp)
    assert df.columns == [
        "chunk_id",
        "doc_id",
        "source",
        "title",
        "heading",
        "position",
        "text",
        "n_tokens",
        "start",
        "end",
    ]
    assert df["position"].to_list() == list(range(df.height))
    assert df["chunk_id"].to_list() == [f"{doc_id_of(text)}-{i:05d}" for i in range(df.height)]
    assert df["n_tokens"].max() <= 64 and df["n_tokens"].min() >= 4
    assert df["n_tokens"].to_list() == count_tokens(tokenizer, df["text"].to_list())
    assert set(df["heading"]) == {"Install", "Usage"}  # "ok" (1 token) is under min_chunk_tokens
    install = df.filter(pl.col("heading") == "Install")["text"].to_list()
    assert len(install) > 3
    # neighbouring chunks of one section overlap: the next starts inside the previous one
    for prev, nxt in itertools.pairwise(install):
        assert nxt.split(". ")[0] in prev
    assert all("Short usage" not in t for t in install)  # never crosses a section boundary


def test_unbreakable_word_is_cut_and_empty_docs_give_nothing(tokenizer) -> None:
    blob = "-".join(["token"] * 300)  # one "word" (no whitespace) of hundreds of tokens
    cp = ChunkParams(chunk_tokens=32, overlap_tokens=0, min_chunk_tokens=1)
    df = chunk_documents(_docs(("blob.txt", blob), ("blank.md", "# only a heading\n")), tokenizer, cp)
    assert df.height > 5 and df["n_tokens"].max() <= 32
    assert set(df["source"]) == {"blob.txt"}
    assert df["text"].str.len_chars().min() > 0


def test_plain_text_without_headings(tokenizer) -> None:
    df = chunk_documents(_docs(("a.txt", "just a line of plain text with several words")), tokenizer, ChunkParams())
    assert df["heading"].to_list() == [""] and df.height == 1


def test_every_chunk_records_its_span_in_the_document(tokenizer) -> None:
    body = "\n\n".join(f"Paragraph {i} says something about topic {i} in plain words." for i in range(40))
    text = f"# guide\n\nintro line\n\n## Usage\n\n{body}\n\n## Notes\n\n  indented note.\n"
    docs = _docs(("guide.md", text))
    for cp in (
        ChunkParams(chunk_tokens=32, overlap_tokens=8),
        ChunkParams(method="chars", chunk_chars=300, overlap_chars=50),
    ):
        chunks = chunk_documents(docs, tokenizer, cp)
        assert chunks.height > 3
        for r in chunks.iter_rows(named=True):
            assert text[r["start"] : r["end"]] == r["text"], (cp.name, r["chunk_id"])
        assert chunks["position"].to_list() == list(range(chunks.height))


def test_chars_method_is_the_naive_recipe(tokenizer) -> None:
    text = "".join(chr(ord("a") + i % 26) + (" " if i % 7 == 0 else "") for i in range(2000))
    chunks = chunk_documents(
        _docs(("a.txt", text)), tokenizer, ChunkParams(method="chars", chunk_chars=1000, overlap_chars=200)
    )
    assert [(r["start"], r["end"]) for r in chunks.iter_rows(named=True)] == [
        (a, min(a + 1000, len(text))) for a in range(0, len(text) - 200, 800)
    ]
    assert set(chunks["heading"]) == {""}
