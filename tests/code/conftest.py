"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from core.registry import Registry


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A real MLflow registry in a temporary sqlite database, with a fresh experiment set."""
    # mlflow.set_tracking_uri/set_registry_uri write module globals and MLFLOW_* variables: put them back after.
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("test", artifact_location=(tmp_path / "mlartifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    return Registry(uri)
