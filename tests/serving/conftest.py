"""A real `bentoml serve` over a project whose registry holds champions and whose index is built.

Where the project comes from (first that applies):
1. `SERVING_TEST_PROJECT=/path` (e.g. the main checkout after `make pipeline`): fast, no pipeline run.
2. A `pipeline` fixture, if one is visible here (tests/e2e/test_pipeline.py's module fixture builds the
   tiny-profile pipeline in a private copy; moved to tests/conftest.py with session scope, the e2e tests
   and these share one build).
3. Otherwise the server tests are skipped, with the reason.

The server runs with cwd = that project and `tests.conftest.project_env` (its own MLflow database,
the venv's tools), on a free port, with test-sized limits through `SERVING_*` overrides.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import VENV_BIN, project_env

# Small limits so the error cases are cheap to provoke; the tests that need them say so.
SERVER_ENV = {
    "SERVING_CHAT_MAX_BATCH_SIZE": "4",
    "SERVING_CHAT_MAX_QUEUE": "0",
    "SERVING_EMBED_MAX_INPUTS": "16",
    "SERVING_MAX_BODY_BYTES": "100000",
    "SERVING_CHAT_MAX_TOKENS": "64",
    "SERVING_CHAT_MAX_CONTEXT_TOKENS": "1024",
    "SERVING_CHAT_DEFAULT_MAX_TOKENS": "16",
}
STARTUP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Server:
    url: str
    project: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def champion_project(request: pytest.FixtureRequest) -> Path:
    if os.environ.get("SERVING_TEST_PROJECT"):
        return Path(os.environ["SERVING_TEST_PROJECT"]).resolve()
    try:
        return Path(request.getfixturevalue("pipeline"))
    except pytest.FixtureLookupError:
        pytest.skip("no project with champions: set SERVING_TEST_PROJECT or provide a session `pipeline` fixture")


@pytest.fixture(scope="session")
def server(champion_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "bentoml.log"
    env = {**project_env(champion_project), **SERVER_ENV}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=champion_project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-6000:]}")
            time.sleep(1)
        yield Server(url, champion_project, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture started (server and its workers)
            proc.wait()
