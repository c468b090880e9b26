"""Live rollout on a real server: promote a new version in its registry and the server switches to it, with no
failed request during the switch; a version that cannot load leaves the old one serving, and the status says why.

This server gets its own copy of the registry database (the shared server's registry is never moved) and its own
model cache, and checks the aliases every half second. Requests keep flowing in a background thread throughout;
waits are on the server's /v1/models and /v1/status, with hang guards.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from core.registry import Registry
from serving.launch import ServerStartError, started_server
from tests.conftest import project_env
from tests.serving.conftest import SERVER_ENV, STARTUP_TIMEOUT_S, Server, until_status

pytestmark = pytest.mark.slow

WAIT_S = 180  # hang guard: loading and warming a second set of models on 2 busy cores


@pytest.fixture(scope="module")
def registry_copy(champion_project: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("rollout-registry")
    shutil.copy(champion_project / "mlflow.db", folder / "mlflow.db")  # artifacts stay where the pipeline put them
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def rollout_server(
    champion_project: Path, registry_copy: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("rollout-server")
    env = {
        **project_env(champion_project),
        **SERVER_ENV,
        "BENTOML_HOME": str(folder / "bentoml-home"),
        "MLFLOW_TRACKING_URI": registry_copy,
        "SERVING_CACHE_DIR": str(folder / "cache"),
        "SERVING_ROLLOUT_POLL_S": "0.5",
        "SERVING_DEBUG_STEP_DELAY_MS": "0",
    }
    try:
        with started_server(champion_project, folder / "bentoml.log", env, timeout_s=STARTUP_TIMEOUT_S) as launched:
            yield Server(launched.url, champion_project, folder / "bentoml.log")
    except ServerStartError as e:
        pytest.fail(str(e))


def _get(server: Server, path: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{server.url}{path}", headers=server.headers, timeout=60).json()
    return found


class Traffic:
    """Chat and embedding requests in a loop on a thread, recording each status and the version that answered."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.seen: list[tuple[int, str]] = []
        self._answered = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def wait_for(self, count: int) -> None:
        """Block until `count` requests have been answered (a hang guard, not a timing)."""
        with self._answered:
            assert self._answered.wait_for(lambda: len(self.seen) >= count, timeout=WAIT_S), len(self.seen)

    def _run(self) -> None:
        chat = {"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2}
        embed = {"model": "embedder", "input": "hi"}
        with httpx.Client(base_url=self.server.url, headers=self.server.headers, timeout=120) as c:
            while not self._stop.is_set():
                for path, body in (("/v1/chat/completions", chat), ("/v1/embeddings", embed)):
                    r = c.post(path, json=body)
                    with self._answered:
                        self.seen.append((r.status_code, r.headers.get("x-model-version", "")))
                        self._answered.notify_all()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)


def _new_version(registry: str, name: str, source_version: str | None = None, source: str | None = None) -> str:
    """Register another version of `name` (from an existing version's logged model, or `source`) and make it
    champion, through the pipeline's own registry module (what `register` does)."""
    if source is None:
        client = MlflowClient(tracking_uri=registry, registry_uri=registry)
        source = client.get_model_version(name, source_version).source
    reg = Registry(registry)
    version = reg.register(source, name)
    reg.promote(name, "champion", version)
    return version


def test_a_promotion_is_served_live_with_no_failed_request(rollout_server: Server, registry_copy: str) -> None:
    status = until_status(rollout_server, "watching", lambda s: s["rollout"]["state"] == "watching")
    old = status["models"]["chat"]["version"]
    with Traffic(rollout_server) as traffic:
        traffic.wait_for(4)  # requests on the old version
        new = _new_version(registry_copy, "chat", source_version=old)
        status = until_status(rollout_server, "switched", lambda s: s["models"]["chat"]["version"] == new)
        traffic.wait_for(len(traffic.seen) + 4)  # requests on the new version
    assert [code for code, _ in traffic.seen if code != 200] == []  # no request failed during the switch
    versions = [v for _, v in traffic.seen if v.startswith("chat/")]
    assert versions[0] == f"chat/{old}" and versions[-1] == f"chat/{new}", versions
    assert versions == sorted(versions, key=lambda v: v != f"chat/{old}")  # old, then new: never back
    listed = {m["id"]: m["version"] for m in _get(rollout_server, "/v1/models")["data"]}
    assert listed["chat"] == new
    rollout = until_status(rollout_server, "done draining", lambda s: s["rollout"]["state"] == "watching")["rollout"]
    assert rollout["switches"] == 1 and rollout["switched_at"] is not None


def test_a_version_that_cannot_load_leaves_the_old_one_serving(rollout_server: Server, registry_copy: str) -> None:
    status = _get(rollout_server, "/v1/status")
    serving = status["models"]["chat"]["version"]
    client = MlflowClient(tracking_uri=registry_copy, registry_uri=registry_copy)
    embedder_files = client.get_model_version("embedder", status["models"]["embedder"]["version"]).source
    broken = _new_version(registry_copy, "chat", source=embedder_files)  # an embedder is no chat model
    status = until_status(rollout_server, "the failed load reported", lambda s: s["rollout"]["state"] == "failed")
    assert broken in status["rollout"]["reason"] and status["rollout"]["target"]["chat"] == broken
    assert status["models"]["chat"]["version"] == serving and status["ready"] is True
    r = httpx.post(
        f"{rollout_server.url}/v1/chat/completions",
        headers=rollout_server.headers,
        json={"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2},
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["x-model-version"] == f"chat/{serving}"
    Registry(registry_copy).promote("chat", "champion", serving)  # back: the rollout settles, loading nothing
    until_status(rollout_server, "watching again", lambda s: s["rollout"]["state"] == "watching")
