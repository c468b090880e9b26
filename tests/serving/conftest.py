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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import torch

from core.loading import load_chat
from serving.engines.chat import ChatEngine
from serving.launch import ServerStartError, started_server
from tests.conftest import project_env

API_KEYS = ("test-key-1", "test-key-2")
# Small limits so the error cases are cheap to provoke; the tests that need them say so.
SERVER_ENV = {
    "SERVING_CHAT_MAX_BATCH_SIZE": "4",
    "SERVING_CHAT_MAX_QUEUE": "0",
    "SERVING_EMBED_MAX_INPUTS": "16",
    "SERVING_MAX_BODY_BYTES": "100000",
    "SERVING_CHAT_MAX_TOKENS": "256",
    "SERVING_CHAT_MAX_CONTEXT_TOKENS": "1024",
    "SERVING_CHAT_DEFAULT_MAX_TOKENS": "16",
    # API keys on, so every test is also a test that a keyed client gets through (test_api_keys: who does not).
    "SERVING_API_KEYS": ",".join(API_KEYS),
    # Every chat forward takes at least 50 ms (serving/faults.py): a 200-token answer is still generating
    # 10 s after it starts on any machine, so the slot and disconnect tests act while it runs, and they
    # learn when to act from /v1/status, not from sleeps.
    "SERVING_DEBUG_STEP_DELAY_MS": "50",
    # Today's anthropic SDK cannot send a temperature: greedy by default on /v1/messages, so the Anthropic
    # tests can compare a streamed answer with a plain one.
    "SERVING_MESSAGES_TEMPERATURE": "0",
}
STARTUP_TIMEOUT_S = 300
STATUS_WAIT_S = 180  # hang guard for server state, not a timing


@dataclass(frozen=True)
class Server:
    url: str
    project: Path
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEYS[0]}"}


T = TypeVar("T")


def until(what: str, probe: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = STATUS_WAIT_S) -> T:
    """Read `probe()` until `ok` holds of it and return that reading; fail with the last one after `timeout_s`.

    The one wait on another process's state in these tests (its /v1/status, its metrics, its log file): those have
    no push channel to wait on, so this re-reads them every 50 ms. It waits for a condition, never for a time, so it
    passes at any CPU speed; `timeout_s` is a guard against a hang, not a timing.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        seen = probe()
        if ok(seen):
            return seen
        assert time.monotonic() < deadline, f"never reached: {what}; last seen {seen}"
        time.sleep(0.05)


def until_status(
    server: Server, what: str, ok: Callable[[dict[str, Any]], bool], timeout_s: float = STATUS_WAIT_S
) -> dict[str, Any]:
    """`until` over the server's /v1/status."""

    def status() -> dict[str, Any]:
        out: dict[str, Any] = httpx.get(f"{server.url}/v1/status", headers=server.headers, timeout=30).json()
        return out

    return until(what, status, ok, timeout_s)


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
    folder = tmp_path_factory.mktemp("server")
    log = folder / "bentoml.log"
    # A private BENTOML_HOME: BentoML clears its Prometheus multiprocess folder at start-up, which would
    # wipe the metrics of a server the developer has running.
    env = {**project_env(champion_project), **SERVER_ENV, "BENTOML_HOME": str(folder / "bentoml-home")}
    try:
        with started_server(champion_project, log, env, timeout_s=STARTUP_TIMEOUT_S) as launched:
            yield Server(launched.url, champion_project, log)
    except ServerStartError as e:
        pytest.fail(str(e))


# ---- the chat engine in-process (engine tests: no server) ----------------------------------------------


@pytest.fixture(scope="module")
def chat_parts(base_dir: Path) -> tuple[Any, Any]:
    """The base chat model and its tokenizer on the CPU, once per module (a test may wrap the model's forward)."""
    torch.manual_seed(0)
    return load_chat(base_dir / "chat", device="cpu")


@contextmanager
def running_engine(chat_parts: tuple[Any, Any], **limits: Any) -> Iterator[ChatEngine]:
    """A started ChatEngine over `chat_parts` with these limits (max_batch_size, max_queue, ...), stopped after."""
    model, tok = chat_parts
    engine = ChatEngine(model, tok, **limits)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
