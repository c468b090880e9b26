"""Stage `evaluate`: score the base and fine-tuned models on the held-out sets.

Writes DVC metrics (`artifacts/metrics/evaluate.json`: `embedder.{base,finetuned}.recall@10`, ...),
the recall@k plot, a sample of generated answers for a person to read, and logs the fine-tuned
models' scores into their training runs in MLflow.
"""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path

import polars as pl

from core import paths
from core.config import Params, params
from core.io import write_json
from core.loading import load_chat, load_embedder
from core.log import get_logger
from core.tracking import log_heldout_metrics
from evaluation.chat_quality import answer_quality, heldout_loss
from evaluation.retrieval import retrieval_metrics

log = get_logger(__name__)


def evaluate_embedders(p: Params) -> dict[str, dict[str, float]]:
    queries = pl.read_parquet(paths.EMBED_EVAL_QUERIES)
    corpus = pl.read_parquet(paths.EMBED_EVAL_CORPUS)
    out = {}
    for name, src in (("base", paths.BASE_EMBEDDER), ("finetuned", paths.EMBEDDER_MODEL)):
        model = load_embedder(src)
        out[name] = retrieval_metrics(model, queries, corpus, p.evaluate.k_values, p.evaluate.batch_size)
        log.info("retrieval model=%s %s", name, " ".join(f"{k}={v}" for k, v in out[name].items()))
        del model
    return out


def evaluate_chats(p: Params) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, str]]]]:
    df = pl.read_parquet(paths.CHAT_EVAL)
    loss_df = df.head(p.evaluate.chat_loss_samples)
    gen_df = df.head(p.evaluate.generation_samples)
    metrics, samples = {}, {}
    for name, src in (("base", paths.BASE_CHAT), ("finetuned", paths.CHAT_MODEL)):
        model, tok = load_chat(src)
        m = heldout_loss(model, tok, loss_df, p.train_chat.max_length)
        quality, samples[name] = answer_quality(model, tok, gen_df, p.evaluate.max_new_tokens)
        metrics[name] = m | quality
        log.info("chat model=%s %s", name, " ".join(f"{k}={v}" for k, v in metrics[name].items()))
        del model
        gc.collect()
    return metrics, samples


def _log_to_training_run(run_file: Path, metrics: dict[str, float]) -> None:
    """Attach held-out scores to the run that trained the model, so the registry shows them."""
    log_heldout_metrics(json.loads(run_file.read_text())["run_id"], metrics)


def write_recall_plot(embedder: dict[str, dict[str, float]], k_values: tuple[int, ...]) -> None:
    paths.RECALL_PLOT.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.RECALL_PLOT, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "base", "finetuned"])
        for k in k_values:
            w.writerow([k, embedder["base"][f"recall@{k}"], embedder["finetuned"][f"recall@{k}"]])


def main() -> None:
    p = params()
    embedder = evaluate_embedders(p)
    chat, samples = evaluate_chats(p)
    write_recall_plot(embedder, p.evaluate.k_values)
    write_json(samples, paths.ANSWERS_REPORT)
    write_json({"embedder": embedder, "chat": chat}, paths.EVAL_METRICS)
    _log_to_training_run(paths.TRAIN_EMBEDDER_METRICS, embedder["finetuned"])
    _log_to_training_run(paths.TRAIN_CHAT_METRICS, chat["finetuned"])


if __name__ == "__main__":
    main()
