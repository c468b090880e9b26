"""DVC stage `python -m data.questions`: held-out questions in the words users search with.

Why these queries, and not the chat model's: the gate must read queries shaped like what people ask,
and the pipeline's earlier held-out queries were headings ("json: DESCRIPTION"). Two ways were open:
generate questions with the chat model, or take the documents' own descriptive sentences. We take the
sentences: a 135M-parameter model at ~16 tokens/s here spends minutes on 300 short questions and copies
its passage more often than it paraphrases it, while a documentation sentence ("Register a virtual
subclass of an ABC.") is what a user who knows what they want types, in plain language, for free and
the same on every run. Imperative sentences become "How do I ...?" questions.

What keeps that honest is the inverse cloze task (Lee, Chang and Toutanova, ACL 2019): each question's
sentence is cut out of its document before anything is chunked or indexed for evaluation
(`eval_documents.parquet`), so no retriever can find the question by matching itself, and must find
the document from the rest of what it says. Relevance is judged per document, so configurations with
different chunkings are scored on the same footing.

Filters: sentences of `min_words`..`max_words` words, mostly words (no code, no signatures), not shared
by two documents (boilerplate such as "Create and return a new object." has no single right answer),
deduplicated, at most `max_per_document` per document and `max_questions` in all, chosen by a seeded
hash so the files are byte-identical across runs.

    eval_questions   query_id, query, doc_id, source, sentence, start, end   (span in the original text)
    eval_documents   the held-out documents with those sentences removed (doc_id, source, title, text)
    embed_train_questions   anchor, positive, doc_id   <- the training documents, for the embedder
    train_questions  the training documents' questions, unmasked (same columns as eval_questions), for the
                     chat model's grounded examples (data/grounded.py)

The training pairs are the same kind of question about the training documents (never a held-out one),
with the chunk that held its sentence as the positive, that sentence cut out of it: the embedder learns
question -> passage in the form it is judged on, not heading -> passage.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from core import paths
from core.config import Params, QuestionParams, params
from core.io import write_json, write_parquet
from core.log import get_logger
from data.datasets import DatasetError, seeded_sample, split_documents

log = get_logger(__name__)

_SENTENCE = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][a-z]*[,;:]?$|^[a-z]+-[a-z]+[,;:]?$")
_CODE = re.compile(r"[=<>{}\[\]|\\`#*_@$]|\(\)|::|->|\w\.\w|\w\(")
# Imperative openings of documentation sentences, asked back as "How do I ...?"
_VERBS = """return create convert get set read write open close make register remove add compute find check build
parse format send receive start stop wait run call test copy move delete change update load save encode decode
split join sort print raise handle define use construct initialize initialise generate produce compare count apply"""
_IMPERATIVE = frozenset(_VERBS.split())


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int
    end: int
    """Character span in the document's text."""


def _runs(text: str) -> Iterator[tuple[int, int]]:
    """Spans of prose runs: consecutive non-blank lines with the same indentation and no list, quote,
    table or heading marker. pydoc indents a description under its signature line, so a change of
    indentation ends a run (the signature is then a run of its own, and the code filter drops it)."""
    start, indent, pos = -1, -1, 0
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        width = len(line) - len(body)
        prose = bool(body) and not body.startswith(("#", ">", "|", "-", "*", "+"))
        if start >= 0 and (not prose or width != indent):
            yield start, pos - 1
            start = -1
        if prose and start < 0:
            start, indent = pos, width
        pos += len(line) + 1
    if start >= 0:
        yield start, len(text)


def sentences(text: str) -> Iterator[Sentence]:
    """Prose sentences of a document with their spans in `text` (headings, lists and code skipped)."""
    for a, b in _runs(text):
        flat = text[a:b].replace("\n", " ")  # one character for one: spans stay valid in `text`
        cursor = 0
        for part in _SENTENCE.split(flat):
            i = flat.find(part, cursor)
            cursor = i + len(part)
            clean = " ".join(part.split())
            if clean:
                yield Sentence(clean, a + i, a + i + len(part))


def as_query(sentence: str, cfg: QuestionParams) -> str | None:
    """The question for a descriptive sentence, or None when it is not one a user would type."""
    words = sentence.split()
    if not cfg.min_words <= len(words) <= cfg.max_words or not sentence.endswith("."):
        return None
    if _CODE.search(sentence) or not words[0][:1].isupper():
        return None
    plain = sum(1 for w in words if _WORD.match(w.rstrip(".")))
    if plain / len(words) < cfg.min_plain_fraction:  # identifiers, numbers, ALL-CAPS: not plain language
        return None
    body = sentence[:-1]
    if words[0].lower() in _IMPERATIVE:
        return f"How do I {body[0].lower()}{body[1:]}?"
    return body


def build_questions(docs: pl.DataFrame, cfg: QuestionParams, seed: int) -> pl.DataFrame:
    """Questions drawn from `docs` (see the module docstring), one row each.

    Returns:
        Columns `query_id, query, doc_id, source, sentence, start, end`, sorted by query_id.
    """
    rows: list[dict[str, object]] = []
    for doc in docs.sort("doc_id").iter_rows(named=True):
        for s in sentences(doc["text"]):
            q = as_query(s.text, cfg)
            if q is not None:
                rows.append({"query": q, "doc_id": doc["doc_id"], "source": doc["source"], "sentence": s.text,
                             "start": s.start, "end": s.end})  # fmt: skip
    schema = {"query": pl.String, "doc_id": pl.String, "source": pl.String, "sentence": pl.String,
              "start": pl.Int64, "end": pl.Int64}  # fmt: skip
    found = pl.DataFrame(rows, schema=schema)
    # A sentence in two documents has no single right answer; the same question twice counts once.
    key = pl.col("query").str.to_lowercase()
    found = found.filter(pl.col("doc_id").n_unique().over(key) == 1).unique(
        subset="query", keep="first", maintain_order=True
    )
    found = found.with_columns(
        query_id=pl.col("query").map_elements(
            lambda q: "q-" + hashlib.sha256(q.encode()).hexdigest()[:12], return_dtype=pl.String
        )
    )
    per_doc = (
        pl.concat(
            [
                seeded_sample(g, cfg.max_per_document, "query_id", seed)
                for _, g in found.group_by("doc_id", maintain_order=True)
            ]
        )
        if found.height
        else found
    )
    picked = seeded_sample(per_doc, cfg.max_questions, "query_id", seed).sort("query_id")
    return picked.select("query_id", "query", "doc_id", "source", "sentence", "start", "end")


def _query_id(query: str) -> str:
    return "q-" + hashlib.sha256(query.encode()).hexdigest()[:12]


def mask_documents(docs: pl.DataFrame, questions: pl.DataFrame) -> pl.DataFrame:
    """`docs` with every question's sentence cut out of its text (the inverse cloze task)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in questions.iter_rows(named=True):
        spans.setdefault(r["doc_id"], []).append((r["start"], r["end"]))
    texts = []
    for doc_id, text in zip(docs["doc_id"], docs["text"], strict=True):
        for a, b in sorted(spans.get(doc_id, []), reverse=True):  # from the end: earlier spans stay valid
            text = text[:a] + text[b:]
        texts.append(text)
    return docs.with_columns(text=pl.Series(texts, dtype=pl.String)).select("doc_id", "source", "title", "text")


def _flat(text: str) -> str:
    return " ".join(text.split())


def training_pairs(questions: pl.DataFrame, chunks: pl.DataFrame) -> pl.DataFrame:
    """(question, the chunk of its document that holds its sentence, with the sentence cut out) pairs.

    Questions whose sentence no chunk holds whole (it straddles two chunks) are dropped.

    Returns:
        Columns `anchor, positive, doc_id`, in the questions' order.
    """
    by_doc: dict[str, list[str]] = {}
    for doc_id, text in zip(chunks["doc_id"], chunks["text"], strict=True):
        by_doc.setdefault(doc_id, []).append(_flat(text))
    rows = []
    for r in questions.iter_rows(named=True):
        holder = next((c for c in by_doc.get(r["doc_id"], []) if r["sentence"] in c), None)
        if holder is not None:
            rest = _flat(holder.replace(r["sentence"], " ", 1))
            if rest:
                rows.append({"anchor": r["query"], "positive": rest, "doc_id": r["doc_id"]})
    return pl.DataFrame(rows, schema={"anchor": pl.String, "positive": pl.String, "doc_id": pl.String})


def split(docs: pl.DataFrame, chunks: pl.DataFrame, p: Params) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training, held-out) documents: the datasets stage's seeded split of the chunked documents."""
    train_ids, eval_ids = split_documents(chunks["doc_id"].to_list(), p.data.datasets.eval_fraction, p.seed)
    return docs.filter(pl.col("doc_id").is_in(train_ids)), docs.filter(pl.col("doc_id").is_in(eval_ids))


def main() -> None:
    p = params()
    for need in (paths.DOCUMENTS, paths.CHUNKS):
        if not need.exists():
            raise SystemExit(f"{need} does not exist: run `dvc repro chunk` first")
    chunks = pl.read_parquet(paths.CHUNKS)
    try:
        train, held = split(pl.read_parquet(paths.DOCUMENTS), chunks, p)
    except DatasetError as e:
        raise SystemExit(f"data.questions: {e}") from None
    cfg = p.data.questions
    questions = build_questions(held, cfg, p.seed)
    if questions.is_empty():
        raise SystemExit(
            f"data.questions: none of the {held.height} held-out documents has a prose sentence of "
            f"{p.data.questions.min_words}-{p.data.questions.max_words} words to ask about; lower "
            "data.questions.min_words or data.questions.min_plain_fraction"
        )
    train_cfg = cfg.model_copy(
        update={"max_per_document": cfg.train_per_document, "max_questions": cfg.max_train_pairs}
    )
    train_questions = build_questions(train, train_cfg, p.seed)
    pairs = training_pairs(train_questions, chunks)
    write_parquet(questions, paths.EVAL_QUESTIONS)
    write_parquet(mask_documents(held, questions), paths.EVAL_DOCUMENTS)
    write_parquet(pairs, paths.EMBED_TRAIN_QUESTIONS)
    write_parquet(train_questions, paths.TRAIN_QUESTIONS)
    stats = {"questions": questions.height, "documents": held.height,
             "documents_with_questions": questions["doc_id"].n_unique(), "train_pairs": pairs.height,
             "train_questions": train_questions.height}  # fmt: skip
    write_json(stats, paths.QUESTIONS_STATS)
    log.info("held-out questions %s out=%s", stats, paths.EVAL_QUESTIONS)


if __name__ == "__main__":
    main()
