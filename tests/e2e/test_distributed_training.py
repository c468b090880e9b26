"""The trainers unchanged under two processes: `torchrun` and `accelerate launch`, as docs/scaling.md says.

Each stage's module runs in a copy of the tiny project holding only the inputs training needs (hard links to
the tiny pipeline's base models and datasets), under a launcher that starts 2 processes on this CPU (gloo).
What must hold: the processes trained as one (the Trainer's world size is 2: each step saw both processes'
batches), and only the main process recorded: one MLflow run, one model saved whole, one metrics file, one
loss plot.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from serving.launch import free_port
from tests.conftest import copy_project, run

pytestmark = pytest.mark.slow

INPUTS = ("artifacts/base", "artifacts/datasets", "artifacts/data")


@pytest.fixture(scope="module")
def trainer_copy(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("distributed"))
    shutil.copy(repo / "profiles" / "tiny.yaml", repo / "params.yaml")
    for rel in INPUTS:  # read-only inputs: linked, not copied (the base chat model alone is ~0.5 GB)
        shutil.copytree(pipeline / rel, repo / rel, copy_function=os.link)
    return repo


def _torchrun(module: str) -> list[str]:
    return ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", module]


def _accelerate(module: str) -> list[str]:
    # `--multi_gpu` is accelerate's torchrun launcher; on a CPU the trainers' `use_cpu` makes it gloo. Every choice is
    # given, so a user's `accelerate config` file cannot change what this test runs.
    choices = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    port = ["--main_process_port", str(free_port())]
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", *choices, *port, "-m", module]


@pytest.mark.parametrize(
    ("stage", "launcher", "model_file"),
    [
        ("train_chat", _accelerate, "model.safetensors"),
        ("train_embedder", _torchrun, "modules.json"),
        ("train_reranker", _torchrun, "model.safetensors"),
    ],
)
def test_trainer_runs_as_two_processes(trainer_copy: Path, stage: str, launcher, model_file: str) -> None:  # type: ignore[no-untyped-def]
    name = stage.removeprefix("train_")
    repo = trainer_copy
    run(launcher(f"training.{name}"), repo, timeout=900)

    summary = json.loads((repo / f"artifacts/metrics/{stage}.json").read_text())
    max_steps = yaml.safe_load((repo / "params.yaml").read_text())[stage]["max_steps"]
    assert summary["processes"] == 2, summary
    assert summary["steps"] == max_steps
    model_dir = repo / "artifacts/models" / name
    assert (model_dir / model_file).is_file()
    assert not model_dir.with_name(name + ".partial").exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")  # this copy's store, not the session's
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = '{stage}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {stage}: one per process instead of one for the job"
    assert runs[0].info.run_id == summary["run_id"]
    assert runs[0].data.params["processes"] == "2"
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(summary["run_id"], "loss")
    assert history, "the per-step loss was not logged"

    with open(repo / f"artifacts/plots/{name}_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == [m.value for m in sorted(history, key=lambda m: m.step)]
