"""`bentoml build` packages the service as `bentoml containerize` needs it (no Docker engine here, so the
image itself is not built): code and params in, data and state out, locked requirements, offline
environment, the service's resources, and the generated Dockerfile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        # a build for a GPU cluster, made on this CPU machine
        "SERVING_RESOURCES_GPU": "1",
        "SERVING_RESOURCES_GPU_TYPE": "nvidia-l4",
    }
    bentoml = Path(sys.executable).parent / "bentoml"
    out = subprocess.run([str(bentoml), "build"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (found,) = [p for p in (home / "bentos" / "modelplatform").iterdir() if p.name != "latest"]
    return found


def test_bento_carries_the_code_and_not_the_data(bento: Path) -> None:
    src = bento / "src"
    needed_files = (
        "service.py",
        "params.yaml",
        "serving/http.py",
        "serving/engines/chat.py",
        "core/config.py",
        "core/chat_template.jinja",
    )  # the tool-call format the server renders prompts with
    for needed in needed_files:
        assert (src / needed).is_file(), needed
    for left_out in ("tests", "state", "artifacts", "data", "training", "mlflow.db", ".venv"):
        assert not (src / left_out).exists(), left_out


def test_bento_config_declares_resources_and_offline_env(bento: Path) -> None:
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    (svc,) = meta["services"]
    assert svc["config"]["resources"] == {"cpu": "2", "memory": "4Gi", "gpu": 1, "gpu_type": "nvidia-l4"}
    assert svc["config"]["workers"] == 1
    assert svc["config"]["logging"]["access"]["enabled"] is False
    envs = {e["name"]: e["value"] for e in meta["envs"]}
    assert envs["HF_HUB_OFFLINE"] == "1"
    assert "torch==2.13.0" in meta["image"]["python_requirements"]


def test_containerize_has_a_dockerfile(bento: Path) -> None:
    """The Dockerfile `bentoml containerize` builds: installs the bento's locked requirements, offline."""
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "\nFROM python:3.11" in dockerfile
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert "torch==2.13.0" in (bento / "env" / "python" / "requirements.txt").read_text()
    assert "ENV HF_HUB_OFFLINE" in dockerfile
    assert "ENTRYPOINT" in dockerfile
