"""Stage `evaluate_rag`: held-out questions answered end to end, as the RAG endpoint answers them.

Runs after `register`, so what it measures is what is served: the `retrieval@champion` unit (the embedder version,
chunks, mode, fusion settings, reranker and abstention threshold it names) searches its own chunks of the held-out
documents. Three configurations, each over the same questions (a seeded sample of `eval_questions.parquet`,
`evaluate.rag_questions`), generating greedily with the prompt serving sends (core/prompts.py):

    naive      the naive recipe: base embedder over fixed 1000-character windows (200 shared), the top
               `serving.rag_top_k` windows by cosine as the numbered passages, no abstention, base chat model
    base       the served retrieval (`served_contexts`): its search, sources assembled by core/context.py as serving
               does, abstaining as serving does (`RetrievalConfig.abstains`); base chat model
    finetuned  the same with the fine-tuned chat model

What is searched: the held-out documents *unmasked* (their question sentences left in). Retrieval with
the sentence cut out is measured by the evaluate stage (the inverse cloze task); this stage measures the
answer when the answer exists in the documents, which is what a user of the served corpus gets.

Metrics (`artifacts/metrics/rag.json`, per configuration; `rag_metrics`):
    answer_f1           token F1 of the answer (citations removed) against the question's sentence and the one
                        after it in the document (data/grounded.py `with_next_sentence`); 0 when abstained
    citation_precision  of the citations kept by core/citations.py `clean`, the share whose source is of the
                        question's document (mean over the answers that cite)
    cited_rate          share of the answers given (not abstained) that cite at least one given source
    declined_rate       share of the answers given that are core/prompts.py `NOT_IN_CONTEXT`
    abstention_rate     share of questions abstained on (retrieval below the threshold)
and `artifacts/reports/rag_answers.json`: the served retrieval version and settings (`retrieval`), and every question
with each configuration's answer and cited documents (`answers`).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from transformers import AutoTokenizer

from core import paths
from core.citations import CITATION, clean
from core.config import Params, params
from core.context import Passage, assemble
from core.fusion import reciprocal_rank_fusion
from core.io import write_json
from core.lexical import LexicalIndex
from core.loading import load_chat, load_embedder, load_reranker
from core.log import get_logger
from core.prompts import NOT_IN_CONTEXT
from core.retrieval_unit import RetrievalConfig, champion_unit
from data.datasets import seeded_sample
from evaluation.chat_quality import generate_answers, token_f1
from evaluation.retrieval import dense_scored, lexical_rankings, naive_chunks, rerank_rankings

log = get_logger(__name__)

CONFIGS = ("naive", "base", "finetuned")


@dataclass(frozen=True)
class Contexts:
    """One configuration's retrieval for every question: the numbered passages and their documents."""

    passages: list[list[str]]
    doc_ids: list[list[str]]
    """Per question, the document of each numbered source, in prompt order."""
    abstained: list[bool]


@dataclass(frozen=True)
class Judged:
    """One answer, its citations checked against the sources it was given."""

    answer: str
    """The answer as served: citations of sources not given removed (`core.citations.clean`)."""
    cited_docs: list[str]
    f1: float
    abstained: bool


def judge(answer: str, source_docs: Sequence[str], abstained: bool, reference: str) -> Judged:
    """Clean one answer's citations as serving does and score it against the reference sentence."""
    if abstained:
        return Judged("", [], 0.0, True)
    text, cited = clean(answer, len(source_docs))
    return Judged(text, [source_docs[k - 1] for k in cited], token_f1(CITATION.sub("", text), reference), False)


def rag_metrics(judged: Sequence[Judged], relevant: Sequence[str]) -> dict[str, float | int]:
    """The stage's metrics over one configuration's answers (see the module docstring).

    Args:
        judged: per question, its judged answer.
        relevant: per question, the document it was asked about.
    """
    n = len(judged)
    given = [j for j in judged if not j.abstained]
    citing = [(j, d) for j, d in zip(judged, relevant, strict=True) if j.cited_docs]
    precision = [sum(c == d for c in j.cited_docs) / len(j.cited_docs) for j, d in citing]
    out: dict[str, float | int] = {
        "answer_f1": sum(j.f1 for j in judged) / max(n, 1),
        "citation_precision": sum(precision) / len(precision) if precision else 0.0,
        "cited_rate": len(citing) / len(given) if given else 0.0,
        "declined_rate": sum(j.answer.strip() == NOT_IN_CONTEXT for j in given) / len(given) if given else 0.0,
        "abstention_rate": (n - len(given)) / max(n, 1),
    }
    return {k: round(v, 4) for k, v in out.items()} | {"questions": n, "citing_answers": len(citing)}


def naive_contexts(p: Params, docs: pl.DataFrame, queries: list[str]) -> Contexts:
    """The naive recipe's top `serving.rag_top_k` windows by cosine (base embedder), never abstaining."""
    windows = naive_chunks(docs, p.evaluate.naive_chunk_chars, p.evaluate.naive_overlap_chars)
    rows, _ = dense_scored(load_embedder(paths.BASE_EMBEDDER), windows, queries, p.serving.rag_top_k)
    texts, doc_of = windows["text"].to_list(), windows["doc_id"].to_list()
    return Contexts([[texts[j] for j in r] for r in rows], [[doc_of[j] for j in r] for r in rows], [False] * len(rows))


def served_contexts(
    p: Params, unit: RetrievalConfig, chunks: pl.DataFrame, queries: list[str], count_tokens: Callable[[str], int]
) -> Contexts:
    """The served retrieval unit's search over `chunks`, then sources as serving assembles them.

    As serving/engines/retriever.py searches: the unit's default mode and fusion settings, the embedder version it
    names, its reranker (when it names one) over the first `rerank_candidates`, and its abstention rule
    (`RetrievalConfig.abstains`); sources as serving/engines/rag.py assembles them (core/context.py).
    """
    top_k = p.serving.rag_top_k
    first = max(top_k, unit.candidates, unit.rerank_candidates if unit.reranker_version else 0)
    n = len(queries)
    dense: list[list[int]] = [[] for _ in range(n)]
    sims: list[list[float]] = [[] for _ in range(n)]
    if unit.mode != "lexical":
        dense, sims = dense_scored(load_embedder(f"models:/{unit.embedder_name}/{unit.embedder_version}"), chunks,
                                   queries, first)  # fmt: skip
    rankings = dense
    if unit.mode != "dense":
        index = LexicalIndex.build(chunks["chunk_id"].to_list(), chunks["text"].to_list(), unit.stemmer)
        lexical = lexical_rankings(index, queries, first)
        rankings = lexical
        if unit.mode == "hybrid":
            rankings = [
                [row for row, _ in reciprocal_rank_fusion([d[: unit.candidates], lx[: unit.candidates]],
                                                          unit.weights(), unit.rrf_k)]
                for d, lx in zip(dense, lexical, strict=True)
            ]  # fmt: skip
    kind: Literal["dense", "reranker"] | None = None if unit.mode == "lexical" else "dense"
    best = [s[0] if s else None for s in sims]
    if unit.reranker_version:
        reranker = load_reranker(f"models:/{unit.reranker_name}/{unit.reranker_version}")
        rankings, heads, _ = rerank_rankings(reranker, queries, chunks["text"].to_list(), rankings,
                                             unit.rerank_candidates, p.evaluate.batch_size)  # fmt: skip
        kind, best = "reranker", [h[0] if h else None for h in heads]
    meta = chunks.select("doc_id", "position").to_dicts()
    ids, texts = chunks["chunk_id"].to_list(), chunks["text"].to_list()
    out = Contexts([], [], [])
    for ranking, top in zip(rankings, best, strict=True):
        # the order is what matters to context assembly: the score only ranks sources (rank-derived here)
        hits = [Passage(ids[j], texts[j], 1.0 / (1 + r), meta[j]) for r, j in enumerate(ranking[:top_k])]
        sources = assemble(hits, count_tokens, p.serving.rag_context_tokens, p.serving.rag_neighbour_window)
        abstain = unit.abstains(top, kind, None)
        out.passages.append([] if abstain else [x.text for x in sources])
        out.doc_ids.append([] if abstain else [str(x.metadata["doc_id"]) for x in sources])
        out.abstained.append(abstain)
    return out


def answer(p: Params, chat_dir: Path, questions: list[str], ctx: Contexts) -> list[str]:
    """Greedy answers over the given passages (abstained questions are not asked)."""
    model, tok = load_chat(chat_dir)
    asked = [i for i, a in enumerate(ctx.abstained) if not a]
    texts = generate_answers(
        model, tok, [questions[i] for i in asked], [ctx.passages[i] for i in asked], p.evaluate.rag_max_new_tokens
    )
    del model
    gc.collect()
    out = [""] * len(questions)
    for i, t in zip(asked, texts, strict=True):
        out[i] = t
    return out


def evaluate_rag(p: Params) -> tuple[dict[str, dict[str, float | int]], dict[str, object]]:
    """Answer the sampled held-out questions with every configuration.

    Returns:
        The metrics per configuration and the report (`retrieval`: the served unit; `answers`: per question).
    """
    from data.grounded import with_next_sentence

    questions = seeded_sample(pl.read_parquet(paths.EVAL_QUESTIONS), p.evaluate.rag_questions, "query_id", p.seed)
    questions = questions.sort("query_id")
    held = pl.read_parquet(paths.EVAL_DOCUMENTS)["doc_id"].to_list()
    docs = pl.read_parquet(paths.DOCUMENTS).filter(pl.col("doc_id").is_in(held))  # unmasked: see the docstring
    with tempfile.TemporaryDirectory() as tmp:
        version, unit, all_chunks = champion_unit(p.models.retrieval_name, p.models.champion_alias, Path(tmp) / "unit")
    chunks = all_chunks.filter(pl.col("doc_id").is_in(held))
    text_of = dict(zip(docs["doc_id"], docs["text"], strict=True))
    queries, relevant = questions["query"].to_list(), questions["doc_id"].to_list()
    # the reference: the sentence and the one after it in the document, as the fine-tuning answers are composed
    refs = [
        with_next_sentence(s, text_of[d][a:])
        for s, d, a in zip(questions["sentence"], relevant, questions["start"], strict=True)
    ]
    chat_tok = AutoTokenizer.from_pretrained(str(paths.BASE_CHAT))  # the server counts context tokens with it

    def count(text: str) -> int:
        return len(chat_tok(text, add_special_tokens=False)["input_ids"])

    log.info(
        "served retrieval: %s version %s (embedder v%s, %s, mode %s, reranker %s), %d held-out chunks",
        p.models.retrieval_name, version, unit.embedder_version, unit.chunking_name, unit.mode,
        unit.reranker_version or "none", chunks.height,
    )  # fmt: skip
    ours = served_contexts(p, unit, chunks, queries, count)
    contexts = {"naive": naive_contexts(p, docs, queries), "base": ours, "finetuned": ours}
    chat_dirs = {"naive": paths.BASE_CHAT, "base": paths.BASE_CHAT, "finetuned": paths.CHAT_MODEL}
    metrics: dict[str, dict[str, float | int]] = {}
    judged: dict[str, list[Judged]] = {}
    for name in CONFIGS:
        t0 = time.perf_counter()
        c = contexts[name]
        answers = answer(p, chat_dirs[name], queries, c)
        judged[name] = [judge(a, d, ab, r) for a, d, ab, r in zip(answers, c.doc_ids, c.abstained, refs, strict=True)]
        metrics[name] = rag_metrics(judged[name], relevant)
        log.info(
            "rag config=%s seconds=%.1f %s",
            name, time.perf_counter() - t0, " ".join(f"{k}={v}" for k, v in metrics[name].items()),
        )  # fmt: skip
    rows: list[dict[str, object]] = []
    for i, q in enumerate(questions.iter_rows(named=True)):
        row: dict[str, object] = {"query_id": q["query_id"], "question": q["query"], "reference": refs[i],
                                  "doc_id": q["doc_id"]}  # fmt: skip
        for name in CONFIGS:
            j = judged[name][i]
            row[name] = {"answer": j.answer, "abstained": j.abstained, "cited_doc_ids": j.cited_docs}
        rows.append(row)
    served = {
        "name": p.models.retrieval_name, "version": version, "embedder_version": unit.embedder_version,
        "chunking": unit.chunking_name, "mode": unit.mode, "reranker_version": unit.reranker_version,
        "abstain_score": unit.abstain_score, "abstain_threshold": unit.abstain_threshold,
    }  # fmt: skip
    return metrics, {"retrieval": served, "answers": rows}


def main() -> None:
    p = params()
    t0 = time.perf_counter()
    metrics, report = evaluate_rag(p)
    write_json(metrics, paths.RAG_METRICS)
    write_json(report, paths.RAG_REPORT)
    log.info("rag evaluated seconds=%.1f out=%s", time.perf_counter() - t0, paths.RAG_METRICS)


if __name__ == "__main__":
    main()
