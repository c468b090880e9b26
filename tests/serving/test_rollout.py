"""Live rollout on a real server: promote a new version in its registry and the server switches to it, with no
failed request during the switch; a version that cannot load leaves the old one serving, and the status says why.

This server gets its own copy of the registry database (the shared server's registry is never moved) and its own
model cache, and checks the aliases every half second. Requests keep flowing in a background thread throughout;
waits are on the server's /v1/models and /v1/status, with hang guards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
def chroma_copy(champion_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the index, so a collection built here for a new embedder touches no other server."""
    folder = tmp_path_factory.mktemp("rollout-chroma") / "chroma"
    shutil.copytree(champion_project / "state" / "chroma", folder)
    return folder


@pytest.fixture(scope="module")
def rollout_server(
    champion_project: Path, registry_copy: str, chroma_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("rollout-server")
    env = {
        **project_env(champion_project),
        **SERVER_ENV,
        "BENTOML_HOME": str(folder / "bentoml-home"),
        "MLFLOW_TRACKING_URI": registry_copy,
        "SERVING_CACHE_DIR": str(folder / "cache"),
        "SERVING_CHROMA_PATH": str(chroma_copy),
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


# Registers a new embedder version (the same files), then a retrieval unit naming it, and promotes the unit: what the
# register stage does when a new embedder wins. Run as its own process, against the registry copy.
NEW_UNIT = """
import sys, tempfile
from pathlib import Path
from mlflow import MlflowClient
from core.registry import Registry
from core.retrieval_unit import LEXICAL_DIR, champion_unit, find_unit, unit_chunks, write_unit
from core.tracking import log_retrieval_model

uri, embedder_version = sys.argv[1], sys.argv[2]
reg = Registry(uri)
source = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("embedder", embedder_version).source
new_embedder = reg.register(source, "embedder")
with tempfile.TemporaryDirectory() as tmp:
    _, config, _ = champion_unit("retrieval", "champion", Path(tmp) / "old", reg)
    old = find_unit(Path(tmp) / "old")
    unit = Path(tmp) / "new"
    # another float embedder version: the old one's int8 form is not its own
    config = config.model_copy(update={"embedder_version": new_embedder, "embedder_int8_version": None})
    write_unit(unit, config, old / LEXICAL_DIR, unit_chunks(old))
    new_unit = reg.register(log_retrieval_model(unit, "test_rollout", {}, {}, ["mlflow"]), "retrieval")
reg.promote("retrieval", "champion", new_unit)
print(new_embedder, new_unit)
"""

# The index stage's own function, pointed at the private Chroma copy: builds the new embedder's collection and makes
# it the active one.
BUILD_INDEX = """
import sys
from pathlib import Path
from core.config import load_params
from data.index import build_index

p = load_params(Path(sys.argv[1]))
built = build_index(p.model_copy(update={"index": p.index.model_copy(update={"chroma_path": sys.argv[2]})}))
print(built["float"].collection)
"""


def test_a_new_embedder_is_served_only_with_its_own_index(
    rollout_server: Server, registry_copy: str, chroma_copy: Path, champion_project: Path
) -> None:
    """A retrieval unit naming another embedder version: the rollout refuses it while the active collection holds
    the old embedder's vectors, keeps serving, and switches (embedder, unit and collection together) once the index
    stage has built and activated the new collection; no request fails on the way."""
    before = until_status(rollout_server, "watching", lambda s: s["rollout"]["state"] == "watching")
    env = project_env(champion_project) | {"MLFLOW_TRACKING_URI": registry_copy}

    def python(script: str, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=champion_project, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-4000:]
        return out.stdout.strip().splitlines()[-1]

    with Traffic(rollout_server) as traffic:
        new_embedder, new_unit = python(NEW_UNIT, registry_copy, before["models"]["embedder"]["version"]).split()
        refused = until_status(rollout_server, "refused for its index", lambda s: s["rollout"]["state"] == "failed")
        assert "rebuild the index" in refused["rollout"]["reason"], refused["rollout"]
        assert refused["models"]["embedder"] == before["models"]["embedder"] and refused["index"] == before["index"]
        collection = python(BUILD_INDEX, str(champion_project / "params.yaml"), str(chroma_copy))
        after = until_status(rollout_server, "switched", lambda s: s["models"]["retrieval"]["version"] == new_unit)
        traffic.wait_for(len(traffic.seen) + 4)
    assert after["models"]["embedder"]["version"] == new_embedder and after["index"] == collection
    assert [code for code, _ in traffic.seen if code != 200] == []
    embedders = [v for _, v in traffic.seen if v.startswith("embedder/")]
    assert embedders[0] == f"embedder/{before['models']['embedder']['version']}", embedders
    assert embedders[-1] == f"embedder/{new_embedder}" and embedders == sorted(
        embedders, key=lambda v: v != embedders[0]
    )
    hits = httpx.post(
        f"{rollout_server.url}/v1/search",
        headers=rollout_server.headers,
        json={"query": "json", "top_k": 2},
        timeout=60,
    )
    assert hits.status_code == 200 and len(hits.json()["results"]) == 2
