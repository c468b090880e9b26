"""Chat fine-tuning examples that teach grounded, cited answers, in the prompt the RAG endpoint sends.

Each example is a question over `n` numbered passages (core/prompts.py `rag_messages`), answered from one
of them and citing it:

    question   "How do I register a virtual subclass of an ABC?"
    contexts   [distractor, the chunk holding the question's sentence, distractor]
    answer     "Register a virtual subclass of an ABC. [2]"

Why each choice:

- Questions are the kind the held-out evaluation asks (data/questions.py): a document's own descriptive
  sentence, asked back. The training documents' questions make chat_train, the held-out documents' make
  chat_eval; passages come only from the same side of the split, so no held-out text reaches training.
- The right passage is the chunk of the question's document that holds its sentence (matched on
  whitespace-flattened text, as `data.questions.training_pairs` does; questions whose sentence straddles two
  chunks are dropped). Unlike the embedder's pairs the sentence stays in: the answer must be in the context.
- Distractors are the BM25 (core/lexical.py) best chunks for the question from *other* documents, one per
  document, none holding the sentence: passages that share the question's words, as retrieval serves them,
  so the model learns to pick the passage that answers, not the one that looks alike. BM25 over every
  training chunk takes seconds (one sparse index, one batched query); where it finds too few, seeded
  random chunks of other documents fill in.
- The right passage's position is seeded-random, so the model cannot learn "cite [1]".
- The answer is the sentence and the one after it in the passage, then ` [k]` (`with_next_sentence`):
  extractive, so a 135M model can learn it in a few steps, and more than the question restated (a
  declarative question is its sentence); the citation is what core/citations.py parses.
- A fraction of examples get distractors only and answer `NOT_IN_CONTEXT`: the system prompt's "if the
  context does not contain the answer, say so", with one fixed sentence so evaluation can count it.
- A fraction of the answerable training examples (`tool_fraction`) teach the tool-call format instead
  (core/prompts.py `example_prompt`): half are the question with tools offered, answered by a `search_docs`
  call in core/tool_calls.py's format; half are the same after that call, its result being the numbered
  passages, answered as a RAG answer is. SmolLM2 knows no tool format, so without these the model can call a
  tool only where the grammar forces it (`tool_choice: required`), never of its own accord (`auto`).

Every choice is a seeded sha256 of the question id (`data.datasets.stable_unit`), so files are
byte-identical across runs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import polars as pl

from core.lexical import LexicalIndex
from core.prompts import NOT_IN_CONTEXT, ExampleFormat
from data.datasets import seeded_sample, stable_unit

SCHEMA = pl.Schema({
    "query_id": pl.String(), "question": pl.String(), "contexts": pl.List(pl.String()), "answer": pl.String(),
    "doc_id": pl.String(), "chunk_id": pl.String(), "answerable": pl.Boolean(), "format": pl.String(),
})  # fmt: skip
"""`chunk_id`: the chunk holding the answer (among `contexts` only when `answerable`); `format`: how the example
is shown, `rag`, `tool_call` or `tool_answer` (core/prompts.py `ExampleFormat`)."""
_MINE_DEPTH = 64
"""BM25 hits looked at per question for distractors (one per other document is kept)."""


def _flat(text: str) -> str:
    return " ".join(text.split())


_NEXT = re.compile(r"\s*(.+?[.!?])(?=\s|$)", re.S)


def with_next_sentence(sentence: str, text: str, max_words: int = 40) -> str:
    """`sentence` and the sentence that follows it in `text`, when one does (prose of 3..`max_words` words, not
    a heading or code line): the reference answer. The sentence alone restates a declarative question (the
    question is that sentence), so an answer that echoed the question would score perfectly; what follows it
    in the source is what a reader of the passage learns beyond the question."""
    flat_text, flat_sentence = _flat(text), _flat(sentence)
    at = flat_text.find(flat_sentence)
    if at < 0:
        return flat_sentence
    m = _NEXT.match(flat_text, at + len(flat_sentence))
    follow = m.group(1) if m else ""
    words = follow.split()
    if not 3 <= len(words) <= max_words or not follow[:1].isupper() or _CODEISH.search(follow):
        return flat_sentence
    return f"{flat_sentence} {follow}"


_CODEISH = re.compile(r"[=<>{}\[\]|\\`#*_@$]|\(\)|::|->|>>>")


def cite(answer: str, number: int) -> str:
    """The grounded answer, citing passage `number` (1-based, as the prompt numbers them)."""
    return f"{answer} [{number}]"


def holders(questions: pl.DataFrame, chunks: pl.DataFrame) -> pl.DataFrame:
    """`questions` with `chunk_id`: the first chunk (by chunk id) of the question's document whose flattened
    text holds the flattened sentence; questions no chunk holds whole are dropped."""
    by_doc: dict[str, list[tuple[str, str]]] = {}
    for cid, doc_id, text in chunks.sort("chunk_id").select("chunk_id", "doc_id", "text").iter_rows():
        by_doc.setdefault(doc_id, []).append((cid, _flat(text)))
    found: list[str | None] = []
    for doc_id, sentence in zip(questions["doc_id"], questions["sentence"], strict=True):
        s = _flat(sentence)
        found.append(next((cid for cid, t in by_doc.get(doc_id, []) if s in t), None))
    return questions.with_columns(chunk_id=pl.Series(found, dtype=pl.String)).drop_nulls("chunk_id")


def unanswerable_ids(query_ids: list[str], fraction: float, seed: int) -> set[str]:
    """Exactly round(fraction * n) of the ids, those with the lowest seeded hash."""
    n = round(fraction * len(query_ids))
    return set(sorted(query_ids, key=lambda q: (stable_unit(seed, f"unanswerable:{q}"), q))[:n])


def _shuffled(ids: list[str], seed: int, key: str) -> Iterator[str]:
    """`ids` in a seeded order; lazy: the hashing happens only when BM25 found too few."""
    yield from sorted(ids, key=lambda c: stable_unit(seed, f"{key}:{c}"))


def mine_distractors(
    questions: pl.DataFrame, chunks: pl.DataFrame, n: int, seed: int, stemmer: str = "english"
) -> list[list[str]]:
    """Per question, `n` chunk ids from other documents: BM25's best first, one per document, none holding
    the question's sentence; seeded random chunks of other documents fill a shortfall (fewer than `n`
    other documents give fewer).

    Args:
        questions: columns `query_id, query, doc_id, sentence`.
        chunks: columns `chunk_id, doc_id, text` (one side of the split only).
    """
    chunks = chunks.sort("chunk_id")
    ids, docs, texts = chunks["chunk_id"].to_list(), chunks["doc_id"].to_list(), chunks["text"].to_list()
    doc_of = dict(zip(ids, docs, strict=True))
    flat = dict(zip(ids, (_flat(t) for t in texts), strict=True))
    hits = LexicalIndex.build(ids, texts, stemmer).search(questions["query"].to_list(), _MINE_DEPTH) if n else []
    out: list[list[str]] = []
    for i, (qid, doc_id, sentence) in enumerate(questions.select("query_id", "doc_id", "sentence").iter_rows()):
        s = _flat(sentence)
        picked: list[str] = []
        used = {doc_id}
        mined = [cid for cid, _ in hits[i]] if n else []
        # few shared words (or a tiny corpus): seeded random chunks of other documents after BM25's
        for cid in itertools.chain(mined, _shuffled(ids, seed, qid)):
            if len(picked) == n:
                break
            if doc_of[cid] not in used and s not in flat[cid]:
                picked.append(cid)
                used.add(doc_of[cid])
        out.append(picked)
    return out


def example_format(query_id: str, answerable: bool, tool_fraction: float, seed: int) -> ExampleFormat:
    """`tool_call` or `tool_answer` for a seeded `tool_fraction` of the answerable examples (half each), else `rag`."""
    u = stable_unit(seed, f"format:{query_id}")
    if not answerable or u >= tool_fraction:
        return "rag"
    return "tool_call" if u < tool_fraction / 2 else "tool_answer"


def grounded_examples(
    questions: pl.DataFrame,
    chunks: pl.DataFrame,
    n_passages: int,
    unanswerable_fraction: float,
    cap: int,
    seed: int,
    stemmer: str = "english",
    tool_fraction: float = 0.0,
) -> pl.DataFrame:
    """Question -> grounded, cited answer examples (see the module docstring).

    Args:
        questions: `build_questions` rows (`query_id, query, doc_id, sentence`, ...) of one side of the split.
        chunks: `chunks.parquet` rows of the same side (`chunk_id, doc_id, text`); passages come only from here.
        n_passages: passages per example.
        unanswerable_fraction: share of examples given distractors only, answered `NOT_IN_CONTEXT`.
        cap: examples at most (a seeded sample of the questions that have a right passage).
        seed: the project seed.
        stemmer: BM25 stemmer for mining distractors (`retrieval.stemmer`).
        tool_fraction: share of the answerable examples shown as `tool_call` or `tool_answer` (half each).

    Returns:
        Columns as `SCHEMA`, sorted by query_id.
    """
    questions = questions.filter(pl.col("doc_id").is_in(chunks["doc_id"].unique().to_list()))
    found = holders(questions, chunks)
    found = seeded_sample(found, cap, "query_id", seed).sort("query_id")
    if found.is_empty():
        return pl.DataFrame(schema=SCHEMA)
    text_of = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    no_answer = unanswerable_ids(found["query_id"].to_list(), unanswerable_fraction, seed)
    # n distractors each: answerable examples use the first n - 1, unanswerable ones all n
    distractors = mine_distractors(found, chunks, n_passages, seed, stemmer)
    rows = []
    for r, others in zip(found.iter_rows(named=True), distractors, strict=True):
        qid = r["query_id"]
        if qid in no_answer:
            contexts, answer = [text_of[c] for c in others], NOT_IN_CONTEXT
        else:
            contexts = [text_of[c] for c in others[: n_passages - 1]]
            at = int(stable_unit(seed, f"position:{qid}") * (len(contexts) + 1))
            contexts.insert(at, text_of[r["chunk_id"]])
            answer = cite(with_next_sentence(r["sentence"], text_of[r["chunk_id"]]), at + 1)
        rows.append({"query_id": qid, "question": r["query"], "contexts": contexts, "answer": answer,
                     "doc_id": r["doc_id"], "chunk_id": r["chunk_id"], "answerable": qid not in no_answer,
                     "format": example_format(qid, qid not in no_answer, tool_fraction, seed)})  # fmt: skip
    return pl.DataFrame(rows, schema=SCHEMA)
