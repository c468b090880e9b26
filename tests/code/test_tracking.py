"""core.tracking against a real MLflow store (sqlite in a temporary folder)."""

from __future__ import annotations

import mlflow
import pytest

from core.registry import Registry
from core.tracking import resume_run, setup_mlflow


def test_an_unknown_run_is_stood_in_for_once(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering into a store other than the one training logged to (a team server named after training):
    the training run is not there, so one new run stands in for it, tagged with the original id."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    trained_elsewhere = "0123456789abcdef0123456789abcdef"
    with resume_run(trained_elsewhere):
        mlflow.log_metric("heldout_mrr", 0.8)
        first = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    with resume_run(trained_elsewhere):
        mlflow.log_metric("heldout_loss", 0.3)
        second = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    assert first == second != trained_elsewhere
    run = mlflow.get_run(first)
    assert run.data.tags["trained_in_run"] == trained_elsewhere
    assert run.data.metrics == {"heldout_mrr": 0.8, "heldout_loss": 0.3}


def test_a_known_run_is_reopened(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    setup_mlflow()  # the pipeline's experiment, where training runs live
    with mlflow.start_run() as trained:
        pass
    with resume_run(trained.info.run_id):
        assert mlflow.active_run().info.run_id == trained.info.run_id  # type: ignore[union-attr]
        mlflow.log_metric("heldout_mrr", 0.5)
    assert mlflow.get_run(trained.info.run_id).data.metrics == {"heldout_mrr": 0.5}
