"""core.config is the pipeline's one reader of the environment; core.device and core.log ask it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import config
from core.config import ConfigError, environment
from core.device import pick_device

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides() -> None:
    env = environment({})
    assert env.root == ROOT
    assert env.cache == Path.home() / ".cache" / "modelplatform"
    assert (env.device, env.log_level, env.tracking_uri, env.wandb_mode) == (None, "INFO", None, "offline")
    env = environment(
        {
            "MODELPLATFORM_ROOT": "/srv/project",
            "MODELPLATFORM_CACHE": "/srv/cache",
            "MODELPLATFORM_DEVICE": "cuda:1",
            "LOG_LEVEL": "debug",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "WANDB_API_KEY": "k",
        }
    )
    assert env.root == Path("/srv/project") and env.cache == Path("/srv/cache")
    assert (env.device, env.log_level, env.tracking_uri, env.wandb_mode) == (
        "cuda:1",
        "DEBUG",
        "http://mlflow:5000",
        "online",
    )
    assert environment({"MODELPLATFORM_DEVICE": "", "WANDB_MODE": "disabled"}).device is None  # empty is unset


def test_device_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPLATFORM_DEVICE", "meta")
    assert pick_device("cpu") == "cpu"  # the server's Settings.device wins
    assert pick_device() == "meta"  # the pipeline's MODELPLATFORM_DEVICE, read by core.config
    monkeypatch.delenv("MODELPLATFORM_DEVICE")
    assert pick_device() in ("cpu", "cuda")


def test_tracking_uri_defaults_to_this_copys_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert config.tracking_uri() == f"sqlite:///{config.PROJECT_ROOT / 'mlflow.db'}"  # where `mlflow ui` looks


def test_a_bad_log_level_says_which_names_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from core.log import get_logger

    monkeypatch.setenv("LOG_LEVEL", "loud")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with pytest.raises(ConfigError, match="LOG_LEVEL='LOUD' is not a log level: set it to one of DEBUG"):
        get_logger("x")
