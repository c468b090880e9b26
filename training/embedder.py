"""Stage `train_embedder`: fine-tune the base embedder on (query, passage) pairs.

The pairs are `train_embedder.pairs`: held-in questions -> the passage that answered them (the form the
gate judges, data/questions.py) and/or section headings -> passage (data/datasets.py), shuffled together
by the trainer's seeded sampler.

sentence-transformers' trainer with MultipleNegativesRankingLoss: every other passage in the batch
is a negative, so no mined negatives are needed. The NO_DUPLICATES sampler keeps two pairs with the
same query (two chunks of one section) out of one batch, where one would be a false negative.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import (
    BatchSamplers,
    SentenceTransformerTrainingArguments,
)

from core import paths
from core.config import Params, params
from core.device import pick_device
from core.io import write_json
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


PAIR_FILES = {"questions": paths.EMBED_TRAIN_QUESTIONS, "headings": paths.EMBED_TRAIN}


def read_pairs(kinds: tuple[str, ...], files: dict[str, Path] = PAIR_FILES) -> pl.DataFrame:
    """The training pairs of the chosen kinds, one frame (`anchor`, `positive`, `kind`)."""
    return pl.concat(
        [pl.read_parquet(files[k]).select("anchor", "positive").with_columns(kind=pl.lit(k)) for k in kinds]
    )


def train_embedder(p: Params, base_dir: Path, pairs: pl.DataFrame, out_dir: Path) -> dict[str, Any]:
    """Fine-tune the sentence-transformers model in `base_dir` on `pairs`; save it to `out_dir`.

    Returns:
        Training summary (final loss, steps, seconds, processes, MLflow run id); under several processes only the
        main one saves and has a run id (training/common.py `training_run`).
    """
    cfg = p.train_embedder
    seed_everything(p.seed)
    counts = {str(k): int(n) for k, n in pairs.group_by("kind").len().sort("kind").iter_rows()}
    pairs = pairs.select("anchor", "positive")
    if pairs.height < cfg.batch_size:
        raise ValueError(
            f"train_embedder.pairs={list(cfg.pairs)} gives {pairs.height} training pairs, fewer than "
            f"train_embedder.batch_size={cfg.batch_size}: use a larger corpus, more pair kinds or a smaller batch size"
        )
    device = pick_device()
    model = SentenceTransformer(str(base_dir), device=device)
    # Train on chunks cut to `max_seq_length` tokens (the cost of a step is linear in it: 32 pairs at
    # 128 tokens take ~3 s here, at 256 ~8 s); the saved model keeps the base's window for inference.
    window = model.max_seq_length
    model.max_seq_length = cfg.max_seq_length
    tmp = out_dir.with_name(out_dir.name + ".partial")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(paths.STATE / "checkpoints" / "embedder"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 here is a ratio of total steps
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=p.seed,
        data_seed=p.seed,
        disable_tqdm=False,
        use_cpu=device == "cpu",  # also what makes several CPU processes train as one (gloo), not each alone
    )
    config = {"seed": p.seed, "base": p.models.embedder_base, "train_pairs": counts, **cfg.model_dump()}
    tags = lineage_tags({f"embed_train_{k}": PAIR_FILES[k] for k in cfg.pairs}) | {"stage": "train_embedder"}
    with training_run("train_embedder", config, tags) as tracker:
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_polars(pairs),
            loss=MultipleNegativesRankingLoss(model),
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
            "train_pairs_by_kind": counts,
            "processes": args.world_size,
        }
        if tracker is None:  # not the main process: the main one saves and records
            return summary
        model.max_seq_length = window
        model.save(str(tmp))
        swap_dir(tmp, out_dir)
        summary["run_id"] = tracker.run_id
        tracker.log_metrics({"final_train_loss": summary["train_loss"], "train_seconds": seconds})
        write_loss_plot(tracker.history, paths.EMBEDDER_LOSS_PLOT)
    log.info("embedder trained steps=%s loss=%.4f seconds=%.1f", summary["steps"], summary["train_loss"], seconds)
    return summary


def main() -> None:
    p = params()
    summary = train_embedder(p, paths.BASE_EMBEDDER, read_pairs(p.train_embedder.pairs), paths.EMBEDDER_MODEL)
    if is_main_process():
        write_json(summary, paths.TRAIN_EMBEDDER_METRICS)


if __name__ == "__main__":
    main()
