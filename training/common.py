"""What the trainers share: seeding, the main-process run and its loss-logging callback, the training outputs.

The trainers run unchanged as one process (`python -m training.chat`, what `dvc repro` does) or as several under
`accelerate launch` / `torchrun` (docs/scaling.md): the Trainer shards the batches over the processes, and
only the main process (rank 0) opens the MLflow/W&B run, saves the model and writes the stage's files, so a
multi-process run records one run and one model, never one per process.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from core.tracking import Tracker, tracked_run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: from the variables `torchrun` and `accelerate launch` set for each
    process they start; (0, 1) for a plain `python -m`. Read from the environment, not `torch.distributed`,
    because the run must be opened before the Trainer initialises the process group."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank()[0] == 0


@contextmanager
def training_run(run_name: str, config: Mapping[str, Any], tags: Mapping[str, str]) -> Iterator[Tracker | None]:
    """`core.tracking.tracked_run` on the main process, recording the world size; None on the others."""
    rank, world = process_rank()
    if rank != 0:
        yield None
        return
    with tracked_run(run_name, {**config, "processes": world}, tags) as tracker:
        yield tracker


class TrackerCallback(TrainerCallback):  # type: ignore[misc]
    """Forwards the Trainer's logs (loss, learning rate, grad norm) to MLflow + W&B every `logging_steps`.

    Used instead of `report_to=["mlflow", "wandb"]` so both trainers log into *our* run (with its
    lineage tags) rather than runs the integrations start on their own. The Trainer calls `on_log` on every
    process; off the main one there is no run (`tracker` is None) and nothing is logged.
    """

    def __init__(self, tracker: Tracker | None) -> None:
        self.tracker = tracker

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float) and k != "epoch"}
        if numeric and self.tracker is not None and state.is_world_process_zero:
            self.tracker.log_metrics(numeric, step=state.global_step)


def write_loss_plot(history: list[dict[str, float]], path: Path) -> None:
    """The per-step training loss as a CSV that `dvc plots show` draws."""
    rows = [(int(h["step"]), h["loss"]) for h in history if "loss" in h]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss"])
        w.writerows(rows)


def swap_dir(tmp: Path, out: Path) -> None:
    """Replace `out` with the completed `tmp` folder, so a crash never leaves a half-written model."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
