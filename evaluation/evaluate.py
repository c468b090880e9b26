"""Stage `evaluate`: score the base and fine-tuned models on the held-out sets.

Writes DVC metrics (`artifacts/metrics/evaluate.json`):
    embedder.{base,finetuned}   held-out questions, per document, dense search over our chunking (the gate
                                reads these)
    naive                       the naive recipe on the same questions: base embedder, fixed 1000-character
                                windows with 200 of overlap, exact cosine, first distinct documents
    lexical                     BM25 over our chunking (core/lexical.py)
    hybrid.{base,finetuned}     dense and BM25 fused by reciprocal rank (core/fusion.py, params `retrieval`)
    reranked                    hybrid (fine-tuned) with its top `retrieval.rerank_candidates` chunks rescored by
                                the fine-tuned cross-encoder (training/reranker.py); `rerank_latency` its cost
    abstention.{dense,reranker} the RAG abstention threshold on each score and how well it separates answerable
                                from unanswerable questions (evaluation/abstention.py)
    chat.{base,finetuned}       held-out answer loss, perplexity, token F1
the recall@k plot (naive, dense base and fine-tuned, lexical, hybrid), a sample of generated answers for a
person to read, and logs the fine-tuned models' scores into their training runs in MLflow.
"""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path
from typing import Any

import polars as pl

from core import paths
from core.config import Params, params
from core.io import write_json
from core.loading import load_chat, load_embedder, load_reranker
from core.log import get_logger
from core.tracking import log_heldout_metrics
from evaluation.abstention import best_scores, choose_threshold
from evaluation.chat_quality import answer_quality, heldout_loss
from evaluation.retrieval import QuestionSet
from evaluation.tool_use import tool_use

log = get_logger(__name__)


def evaluate_embedders(p: Params) -> dict[str, Any]:
    """Every retrieval configuration on the held-out questions."""
    qs = QuestionSet.load(p)
    modes: dict[str, dict[str, dict[str, float]]] = {}
    naive: dict[str, float] = {}
    rankings: dict[str, list[list[int]]] = {}
    sims: list[list[float]] = []
    for name, src in (("base", paths.BASE_EMBEDDER), ("finetuned", paths.EMBEDDER_MODEL)):
        model = load_embedder(src)
        if name == "base":
            naive = qs.score(model, p, naive=True)
        rankings, sims = qs.scored_rankings(model, p)  # the fine-tuned one's, last: what follows is scored on it
        modes[name] = {mode: qs.metrics(r, p) for mode, r in rankings.items()}
        del model
    reranked_rankings, rerank_scores, rerank_ms = qs.rerank(load_reranker(paths.RERANKER_MODEL), rankings["hybrid"], p)
    reranked = qs.metrics(reranked_rankings, p)
    relevant = qs.questions["doc_id"].to_list()
    floor = p.retrieval.abstain_min_answered
    abstention = {
        "dense": choose_threshold(*best_scores(qs.scored_documents(rankings["dense"], sims), relevant), floor),
        "reranker": choose_threshold(
            *best_scores(qs.scored_documents(reranked_rankings, rerank_scores), relevant), floor
        ),
    }
    for kind, a in abstention.items():
        log.info("abstention score=%s %s", kind, " ".join(f"{k}={v}" for k, v in a.items()))
    log.info("questions config=hybrid+rerank/finetuned %s", " ".join(f"{k}={v}" for k, v in reranked.items()))
    log.info("questions config=naive %s", " ".join(f"{k}={v}" for k, v in naive.items()))
    for name, by_mode in modes.items():
        for mode, m in by_mode.items():
            log.info("questions config=%s/%s %s", mode, name, " ".join(f"{k}={v}" for k, v in m.items()))
    log.info(
        "held-out questions=%d chunks=%d naive_chunks=%d", qs.questions.height, qs.chunks.height, qs.naive_chunks.height
    )
    return {
        "embedder": {name: m["dense"] for name, m in modes.items()},
        "naive": naive,
        "lexical": modes["base"]["lexical"],
        "hybrid": {name: m["hybrid"] for name, m in modes.items()},
        "reranked": reranked,
        "rerank_latency": {"candidates": p.retrieval.rerank_candidates, "ms_per_query": round(rerank_ms, 1)},
        "abstention": abstention,
    }


def evaluate_chats(p: Params) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, str]]]]:
    df = pl.read_parquet(paths.CHAT_EVAL)
    loss_df = df.head(p.evaluate.chat_loss_samples)
    gen_df = df.head(p.evaluate.generation_samples)
    metrics, samples = {}, {}
    for name, src in (("base", paths.BASE_CHAT), ("finetuned", paths.CHAT_MODEL)):
        model, tok = load_chat(src)
        m = heldout_loss(model, tok, loss_df, p.train_chat.max_length)
        quality, samples[name] = answer_quality(model, tok, gen_df, p.evaluate.max_new_tokens)
        tools, samples[f"{name}_tool_use"] = tool_use(model, tok, gen_df, p.evaluate.max_new_tokens)
        metrics[name] = m | quality | tools
        log.info("chat model=%s %s", name, " ".join(f"{k}={v}" for k, v in metrics[name].items()))
        del model
        gc.collect()
    return metrics, samples


def _log_to_training_run(run_file: Path, metrics: dict[str, float]) -> None:
    """Attach held-out scores to the run that trained the model, so the registry shows them."""
    log_heldout_metrics(json.loads(run_file.read_text())["run_id"], metrics)


def write_recall_plot(retrieval: dict[str, Any], k_values: tuple[int, ...]) -> None:
    """recall@k on the held-out questions: naive, dense (base, fine-tuned), lexical, hybrid, hybrid + reranker."""
    paths.RECALL_PLOT.parent.mkdir(parents=True, exist_ok=True)
    rows = {
        "naive": retrieval["naive"],
        **retrieval["embedder"],
        "lexical": retrieval["lexical"],
        "hybrid": retrieval["hybrid"]["finetuned"],
        "reranked": retrieval["reranked"],
    }
    with open(paths.RECALL_PLOT, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", *rows])
        for k in k_values:
            w.writerow([k, *(m[f"recall@{k}"] for m in rows.values())])


def main() -> None:
    p = params()
    retrieval = evaluate_embedders(p)
    chat, samples = evaluate_chats(p)
    write_recall_plot(retrieval, p.evaluate.k_values)
    write_json(samples, paths.ANSWERS_REPORT)
    write_json({**retrieval, "chat": chat}, paths.EVAL_METRICS)
    _log_to_training_run(paths.TRAIN_EMBEDDER_METRICS, retrieval["embedder"]["finetuned"])
    _log_to_training_run(paths.TRAIN_CHAT_METRICS, chat["finetuned"])
    _log_to_training_run(paths.TRAIN_RERANKER_METRICS, retrieval["reranked"])


if __name__ == "__main__":
    main()
