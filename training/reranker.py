"""Stage `train_reranker`: fine-tune a cross-encoder that scores (question, passage) pairs.

Starts from the MiniLM weights the embedder starts from (a new one-logit head on top), and learns from
the held-in questions (data/questions.py: question -> the passage it was cut from; never a held-out
document) with hard negatives mined by BM25: for each question, chunks of *other* documents that the
lexical retriever ranks high, i.e. the near misses a first-stage retriever hands the reranker. Binary
cross-entropy on one positive and `negatives` negatives per question: the cheapest cross-encoder loss
(one forward per pair; in-batch losses score every question against every passage in the batch).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import polars as pl
from datasets import Dataset
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from sentence_transformers.cross_encoder.trainer import CrossEncoderTrainer
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments

from core import paths
from core.config import Params, params
from core.device import pick_device
from core.io import write_json
from core.lexical import LexicalIndex
from core.log import get_logger
from core.tracking import lineage_tags
from training.common import (
    TrackerCallback,
    is_main_process,
    seed_everything,
    swap_dir,
    training_run,
    write_loss_plot,
)

log = get_logger(__name__)


def mine_pairs(questions: pl.DataFrame, chunks: pl.DataFrame, p: Params) -> pl.DataFrame:
    """(query, passage, label) rows: each question's own passage (1.0) and BM25-mined negatives (0.0).

    Args:
        questions: `anchor` (question), `positive` (its passage), `doc_id`.
        chunks: the training documents' chunks (`chunk_id`, `doc_id`, `text`); negatives come from other
            documents only, so a passage of the same document (which may answer too) is never labelled wrong.
    """
    cfg = p.train_reranker
    questions = questions.sample(n=min(cfg.max_questions, questions.height), seed=p.seed, shuffle=True)
    index = LexicalIndex.build(chunks["chunk_id"].to_list(), chunks["text"].to_list(), p.retrieval.stemmer)
    doc_of = dict(zip(chunks["chunk_id"], chunks["doc_id"], strict=True))
    text_of = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    rng = random.Random(p.seed)
    hits = index.search(questions["anchor"].to_list(), cfg.mine_depth * 3)
    rows: list[dict[str, Any]] = []
    for (query, positive, doc_id), found in zip(
        questions.select("anchor", "positive", "doc_id").iter_rows(), hits, strict=True
    ):
        others = [c for c, _ in found if doc_of[c] != doc_id][: cfg.mine_depth]
        rows.append({"query": query, "passage": positive, "label": 1.0})
        for c in rng.sample(others, min(cfg.negatives, len(others))):
            rows.append({"query": query, "passage": text_of[c], "label": 0.0})
    return pl.DataFrame(rows, schema={"query": pl.String, "passage": pl.String, "label": pl.Float32})


def train_reranker(p: Params, base_dir: Path, pairs: pl.DataFrame, out_dir: Path) -> dict[str, Any]:
    """Fine-tune a cross-encoder from the encoder in `base_dir` on `pairs`; save it to `out_dir`.

    Returns:
        Training summary (final loss, steps, seconds, pairs, processes, MLflow run id); under several processes
        only the main one saves and has a run id (training/common.py `training_run`).
    """
    cfg = p.train_reranker
    seed_everything(p.seed)
    if pairs.height < cfg.batch_size:
        raise ValueError(
            f"{pairs.height} reranker training pairs, fewer than train_reranker.batch_size={cfg.batch_size}: "
            "use a larger corpus or a smaller batch size"
        )
    device = pick_device()
    model = CrossEncoder(str(base_dir), num_labels=1, max_length=cfg.max_length, device=device)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    args = CrossEncoderTrainingArguments(
        output_dir=str(paths.STATE / "checkpoints" / "reranker"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 here is a ratio of total steps
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=p.seed,
        data_seed=p.seed,
        disable_tqdm=False,
        # every parameter takes part in each step: DDP need not search the graph for unused ones, and its search
        # (the Trainer default) fails on this cross-encoder ("classifier.bias marked as ready twice", torchrun, ST 6.2)
        ddp_find_unused_parameters=False,
        use_cpu=device == "cpu",  # also what makes several CPU processes train as one (gloo), not each alone
    )
    positives = int((pairs["label"] > 0).sum())
    config = {"seed": p.seed, "base": p.models.embedder_base, "positives": positives, **cfg.model_dump()}
    tags = lineage_tags({"embed_train_questions": paths.EMBED_TRAIN_QUESTIONS, "chunks": paths.CHUNKS})
    with training_run("train_reranker", config, tags | {"stage": "train_reranker"}) as tracker:
        trainer = CrossEncoderTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_polars(pairs).shuffle(seed=p.seed),
            loss=BinaryCrossEntropyLoss(model),
            callbacks=[TrackerCallback(tracker)],
        )
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {
            "train_loss": float(result.training_loss),
            "steps": int(result.global_step),
            "train_seconds": round(seconds, 1),
            "train_pairs": pairs.height,
            "positives": positives,
            "processes": args.world_size,
        }
        if tracker is None:  # not the main process: the main one saves and records
            return summary
        model.save(str(tmp))
        swap_dir(tmp, out_dir)
        summary["run_id"] = tracker.run_id
        tracker.log_metrics({"final_train_loss": summary["train_loss"], "train_seconds": seconds})
        write_loss_plot(tracker.history, paths.RERANKER_LOSS_PLOT)
    log.info("reranker trained steps=%s loss=%.4f seconds=%.1f", summary["steps"], summary["train_loss"], seconds)
    return summary


def main() -> None:
    p = params()
    held_out = pl.read_parquet(paths.EVAL_DOCUMENTS, columns=["doc_id"])["doc_id"]
    chunks = pl.read_parquet(paths.CHUNKS, columns=["chunk_id", "doc_id", "text"])
    # nothing held out reaches training, not even as a negative
    pairs = mine_pairs(
        pl.read_parquet(paths.EMBED_TRAIN_QUESTIONS), chunks.filter(~pl.col("doc_id").is_in(held_out)), p
    )
    summary = train_reranker(p, paths.BASE_EMBEDDER, pairs, paths.RERANKER_MODEL)
    if is_main_process():
        write_json(summary, paths.TRAIN_RERANKER_METRICS)


if __name__ == "__main__":
    main()
