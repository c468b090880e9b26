"""Stage `select_chunking`: choose chunk size and overlap by measurement, before anything is trained.

Every candidate of params `data.chunking.grid` (laid over `data.chunk`; the naive recipe's fixed
1,000-character windows among them) chunks the same held-in documents, and the base embedder, BM25 and
their fusion answer the same questions about them; the candidate with the best `gate.embedder_metric` in
mode `data.chunking.select_by` wins (ties: the first listed), and every later stage chunks that way
(core/chunking.py). When nothing beats the naive windows, the naive windows are what gets built and served.

The questions are the held-out evaluation's kind (data/questions.py: documents' descriptive sentences,
cut out of the documents before chunking, the inverse cloze task), but about held-in documents, so the
choice sees nothing of the held-out set and does not go through training (no cycle: the models are
trained on the chosen chunks). A seeded sample of `max_documents` documents keeps the cost bounded:
each candidate embeds its chunks of them once.

Writes `artifacts/metrics/chunking.json` (a DVC metrics file): the chosen chunking, why, and each
candidate's dense / lexical / hybrid scores and chunk count.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from sentence_transformers import SentenceTransformer
from transformers import PreTrainedTokenizerBase

from core import paths
from core.config import ChunkParams, Params, params
from core.io import write_json
from core.loading import load_embedder
from core.log import get_logger
from data.chunk import chunk_documents, load_tokenizer
from data.datasets import DatasetError, seeded_sample, split_documents
from data.questions import build_questions, mask_documents
from evaluation.retrieval import QuestionSet

log = get_logger(__name__)


def held_in_questions(docs: pl.DataFrame, p: Params) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Questions about a seeded sample of the training documents, and those documents with the questions' sentences
    cut out.

    The split is the datasets stage's (seeded hash per document id; it differs only when a corpus is so small
    that a side would be empty, and then only by the one document moved over).

    Raises:
        DatasetError: too few documents, or none with a sentence to ask about.
    """
    cfg = p.data.chunking
    train_ids, _ = split_documents(docs["doc_id"].to_list(), p.data.datasets.eval_fraction, p.seed)
    train = seeded_sample(docs.filter(pl.col("doc_id").is_in(train_ids)), cfg.max_documents, "doc_id", p.seed)
    q = p.data.questions
    qcfg = q.model_copy(update={"max_per_document": q.train_per_document, "max_questions": cfg.max_questions})
    questions = build_questions(train, qcfg, p.seed)
    if questions.is_empty():
        raise DatasetError(
            f"none of the {train.height} held-in documents sampled has a prose sentence to ask about; "
            "lower data.questions.min_words or data.questions.min_plain_fraction"
        )
    return questions, mask_documents(train, questions)


def score_candidates(
    candidates: list[ChunkParams],
    docs: pl.DataFrame,
    questions: pl.DataFrame,
    embedder: SentenceTransformer,
    tokenizer: PreTrainedTokenizerBase,
    p: Params,
) -> dict[str, dict[str, Any]]:
    """Each candidate's dense, lexical and hybrid scores on `questions` over its chunks of `docs`, by name."""
    out: dict[str, dict[str, Any]] = {}
    for i, cp in enumerate(candidates, 1):
        t0 = time.perf_counter()
        chunks = chunk_documents(docs, tokenizer, cp).select("chunk_id", "doc_id", "text")
        qs = QuestionSet(questions=questions, chunks=chunks, naive_chunks=chunks.clear())
        scores = qs.score_modes(embedder, p)
        out[cp.name] = {**scores, "chunks": chunks.height, "params": cp.model_dump()}
        log.info(
            "candidate %d/%d chunking=%s chunks=%d seconds=%.0f %s",
            i, len(candidates), cp.name, chunks.height, time.perf_counter() - t0,
            " ".join(f"{mode}.{p.gate.embedder_metric}={s[p.gate.embedder_metric]}" for mode, s in scores.items()),
        )  # fmt: skip
    return out


def choose(scores: dict[str, dict[str, Any]], mode: str, metric: str) -> tuple[str, list[str]]:
    """The candidate with the best `metric` in `mode` (ties: the first), and one reason line per candidate, best
    first."""
    names = list(scores)
    ranked = sorted(names, key=lambda n: (-scores[n][mode][metric], names.index(n)))
    best = scores[ranked[0]][mode][metric]
    reasons = [
        f"{n}: {mode} {metric} {scores[n][mode][metric]:.4f}"
        + (" -> chosen" if n == ranked[0] else f" ({scores[n][mode][metric] - best:+.4f})")
        for n in ranked
    ]
    return ranked[0], reasons


def main() -> None:
    p = params()
    if not paths.DOCUMENTS.exists():
        raise SystemExit(f"{paths.DOCUMENTS} does not exist: run `dvc repro ingest` first")
    try:
        questions, docs = held_in_questions(pl.read_parquet(paths.DOCUMENTS), p)
    except DatasetError as e:
        raise SystemExit(f"select_chunking: {e}") from None
    candidates = p.data.chunking.candidates(p.data.chunk)
    log.info(
        "comparing chunkings=%s documents=%d questions=%d",
        ",".join(c.name for c in candidates), docs.height, questions.height,
    )  # fmt: skip
    scores = score_candidates(candidates, docs, questions, load_embedder(paths.BASE_EMBEDDER), load_tokenizer(), p)
    mode, metric = p.data.chunking.select_by, p.gate.embedder_metric
    chosen, reasons = choose(scores, mode, metric)
    write_json(
        {
            "chosen": chosen,
            "chunk": scores[chosen]["params"],
            "select_by": f"{mode} {metric}",
            "documents": docs.height,
            "questions": questions.height,
            "candidates": scores,
            "reasons": reasons,
        },
        paths.CHUNKING,
    )
    for r in reasons:
        log.info("chunking %s", r)


if __name__ == "__main__":
    main()
