"""Run `bentoml serve` as a child process on a free loopback port, until ready: one helper for the
server tests and the throughput benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


class ServerStartError(RuntimeError):
    """The server exited, failed to start or was not ready in time; the message carries the tail of its log."""


# What BentoML's worker logs when the service's __init__ raises (a StartupError naming what to fix). Outside a
# container (`BENTOML_CONTAINERIZED` unset) BentoML's process manager then respawns the worker, which fails the same
# way, over and over (50 times in 3 minutes, seen 2026-12-02): the server never exits, so waiting for it to would
# take the whole timeout.
BENTOML_STARTUP_FAILED = "Application startup failed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Launched:
    url: str
    pid: int
    """The server process (`bentoml serve`: its workers are its descendants)."""


@contextmanager
def started_server(
    project: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
    target: str | None = None,
) -> Iterator[Launched]:
    """Start `bentoml serve` in `project`, wait for `/readyz`, yield its URL and pid; stop it on exit.

    Args:
        project: the folder holding service.py (its MLflow registry and index are what gets served).
        log: where the server's output goes.
        env: the server's environment (default: this process's).
        timeout_s: how long loading and warming the models may take.
        target: the service to serve (`module:Class`); default: bentofile.yaml's, i.e. service.py.

    Raises:
        ServerStartError: the server exited, its service failed to start, or was not ready within `timeout_s`.
    """
    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    argv = [str(bentoml), "serve", *([target] if target else []), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with started_process(argv, project, log, url, "/readyz", env, timeout_s, BENTOML_STARTUP_FAILED) as launched:
        yield launched


@contextmanager
def started_process(
    argv: list[str],
    cwd: Path,
    log: Path,
    url: str,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
    failed_marker: str | None = None,
) -> Iterator[Launched]:
    """Start any HTTP server (ours, or a benchmark peer), wait until `GET url + ready_path` answers 200, yield;
    stop its whole process group on exit.

    Raises:
        ServerStartError: the process exited, wrote `failed_marker` to its log, or was not ready within `timeout_s`.
    """
    name = Path(argv[0]).name
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the server and its workers stop together
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerStartError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            if failed_marker and failed_marker in (text := log.read_text(errors="replace")):
                raise ServerStartError(f"{name} failed to start ({failed_marker!r} in its log):\n{text[-6000:]}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{name} not ready after {timeout_s:g}s:\n{log.read_text()[-6000:]}")
            time.sleep(1)
        yield Launched(url, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
