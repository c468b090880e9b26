"""The platform on a team's shared services, by configuration alone: a PostgreSQL-backed `mlflow server` serving
artifacts, and a `chroma run` server (tests/services.py starts all three on loopback).

A copy of the project whose params name the Chroma server and whose environment names the MLflow server runs the
tiny pipeline's `register` and `index` stages over the first run's trained models (linked, not retrained): the models
are registered into PostgreSQL through the tracking server and the index is built in the Chroma server. Two serving
processes, each with nothing local (no `mlflow.db`, no Chroma folder, their own empty model caches), then resolve
the same champions from the tracking server and give the same search results from the shared index.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from serving.launch import started_server
from tests.conftest import copy_project, project_env
from tests.services import chroma_server, mlflow_server, postgres

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Shared:
    mlflow: str
    chroma_host: str
    chroma_port: int


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    folder = tmp_path_factory.mktemp("services")
    with postgres() as pg, mlflow_server(pg, folder) as tracking, chroma_server(folder) as (host, port):
        yield Shared(tracking, host, port)


@pytest.fixture(scope="module")
def team_project(pipeline: Path, shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("team"))
    tiny = yaml.safe_load((repo / "profiles" / "tiny.yaml").read_text())
    tiny["index"] |= {"chroma_host": shared.chroma_host, "chroma_port": shared.chroma_port}
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny))
    (repo / "artifacts" / "index").mkdir(parents=True)
    for part in ("base", "models", "datasets", "data", "metrics"):  # the first run's inputs, read only
        (repo / "artifacts" / part).symlink_to(pipeline / "artifacts" / part)
    (repo / "artifacts" / "index" / "lexical").symlink_to(pipeline / "artifacts" / "index" / "lexical")
    env = project_env(repo) | {"MLFLOW_TRACKING_URI": shared.mlflow}
    for stage in ("evaluation.register", "data.index"):
        out = subprocess.run(
            [sys.executable, "-m", stage], cwd=repo, env=env, capture_output=True, text=True, timeout=1200
        )
        assert out.returncode == 0, f"{stage} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return repo


def test_the_pipeline_registers_into_the_tracking_server_and_indexes_into_chroma(
    team_project: Path, shared: Shared
) -> None:
    assert not (team_project / "mlflow.db").exists()  # nothing written to a local registry
    assert not (team_project / "state" / "chroma").exists()  # nor a local index
    client = MlflowClient(tracking_uri=shared.mlflow, registry_uri=shared.mlflow)
    for name in ("chat", "embedder", "retrieval"):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.source.startswith("models:/"), champion.source  # logged through the server
    chroma = httpx.get(f"http://{shared.chroma_host}:{shared.chroma_port}/api/v2/heartbeat", timeout=10)
    assert chroma.status_code == 200


def test_two_servers_with_no_local_state_serve_the_same_versions_and_results(
    team_project: Path, shared: Shared, tmp_path: Path
) -> None:
    query = {"query": "How do I convert a Python object to a JSON string?", "top_k": 3}
    answers = []
    with ExitStack() as stack:
        for i in range(2):
            env = project_env(team_project) | {
                "MLFLOW_TRACKING_URI": shared.mlflow,
                "SERVING_CACHE_DIR": str(tmp_path / f"cache-{i}"),
                "BENTOML_HOME": str(tmp_path / f"bentoml-{i}"),
                "SERVING_ROLLOUT_POLL_S": "0",
            }
            server = stack.enter_context(started_server(team_project, tmp_path / f"server-{i}.log", env))
            models = httpx.get(f"{server.url}/v1/models", timeout=60).json()
            hits = httpx.post(f"{server.url}/v1/search", json=query, timeout=60).json()
            answers.append(({m["id"]: m["version"] for m in models["data"]}, hits))
    (versions_a, hits_a), (versions_b, hits_b) = answers
    client = MlflowClient(tracking_uri=shared.mlflow, registry_uri=shared.mlflow)
    champion = client.get_model_version_by_alias("chat", "champion").version
    assert versions_a == versions_b and versions_a["chat"] == champion
    assert [h["id"] for h in hits_a["results"]] == [h["id"] for h in hits_b["results"]]
    assert [h["score"] for h in hits_a["results"]] == pytest.approx([h["score"] for h in hits_b["results"]], abs=1e-5)
    assert len(hits_a["results"]) == 3
