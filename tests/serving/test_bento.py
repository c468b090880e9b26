"""`bentoml build` packages the service as `bentoml containerize` needs it (no Docker engine here, so the
image itself is not built): code and params in, data and state out, locked requirements, offline
environment, the service's resources, and the generated Dockerfile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from serving.launch import started_server
from tests.conftest import project_env
from tests.serving.conftest import STARTUP_TIMEOUT_S

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
        "core/chat_template.jinja",  # the tool-call format the server renders prompts with
        "serving/playground/index.html",  # the playground's static files
        "serving/playground/app.js",
        "serving/playground/app.css",
    )
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


def test_the_built_bento_serves(bento: Path, champion_project: Path, tmp_path: Path) -> None:
    """`bentoml serve <tag>` runs the bento itself (its own copy of the code and params, not this source tree),
    pointed at the project's registry and index by environment alone, as a container would be."""
    tag = f"modelplatform:{bento.name}"
    env = {
        **project_env(champion_project),
        "BENTOML_HOME": str(bento.parents[2]),  # the store the fixture built into
        "MLFLOW_TRACKING_URI": f"sqlite:///{champion_project / 'mlflow.db'}",
        "SERVING_CHROMA_PATH": str(champion_project / "state" / "chroma"),
        "SERVING_CACHE_DIR": str(tmp_path / "cache"),
        "SERVING_RESOURCES_GPU": "0",
    }
    env.pop("PYTHONPATH", None)  # nothing from the source tree: the bento's own src/ is what runs
    with started_server(tmp_path, tmp_path / "bento.log", env, timeout_s=STARTUP_TIMEOUT_S, target=tag) as server:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        search = httpx.post(f"{server.url}/v1/search", json={"query": "json", "top_k": 2}, timeout=60)
        assert search.status_code == 200 and len(search.json()["results"]) == 2
