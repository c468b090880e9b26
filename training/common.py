"""What both trainers share: seeding, the loss-logging callback and the training outputs."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from core.tracking import Tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrackerCallback(TrainerCallback):  # type: ignore[misc]
    """Forwards the Trainer's logs (loss, learning rate, grad norm) to MLflow + W&B every `logging_steps`.

    Used instead of `report_to=["mlflow", "wandb"]` so both trainers log into *our* run (with its
    lineage tags) rather than runs the integrations start on their own.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float) and k != "epoch"}
        if numeric:
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
