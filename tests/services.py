"""The shared services a team runs, started for real on loopback: PostgreSQL, an MLflow tracking server backed by it
(serving artifacts), and a Chroma server. Each is a context manager that yields its URL and stops it on exit.

PostgreSQL 15's binaries are on these machines with no server running: `postgres()` makes a cluster in a fresh
folder with `initdb` and starts it with `pg_ctl` on a free port. `initdb` refuses to run as root, so under root
(CI) the cluster belongs to the `postgres` user and the commands run through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.launch import free_port, started_process

BIN = Path(sys.executable).parent


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary folder; yields its SQLAlchemy URL (`postgresql+psycopg2://...`)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    assert initdb and pg_ctl, "PostgreSQL's initdb and pg_ctl are not on the PATH"
    folder = Path(tempfile.mkdtemp(prefix="modelplatform-pg-"))  # under /tmp: reachable by the postgres user
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    try:
        _run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]))
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run(_as_postgres([pg_ctl, "-D", str(data), "-l", str(folder / "postgres.log"), "-o", options, "-w", "start"]))
        try:
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"  # the driver we install
        finally:
            _run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mlflow_server(backend: str, folder: Path) -> Iterator[str]:
    """`mlflow server` over `backend`, storing and serving artifacts under `folder`; yields its URL."""
    port = free_port()
    argv = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
        "--artifacts-destination", (folder / "artifacts").as_uri(), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    url = f"http://127.0.0.1:{port}"
    with started_process(argv, folder, folder / "mlflow-server.log", url, "/health", env, timeout_s=300):
        yield url


@contextmanager
def chroma_server(folder: Path) -> Iterator[tuple[str, int]]:
    """`chroma run` persisting under `folder`; yields (host, port)."""
    port = free_port()
    argv = [str(BIN / "chroma"), "run", "--path", str(folder / "chroma"), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with started_process(argv, folder, folder / "chroma.log", url, "/api/v2/heartbeat", None, timeout_s=120):
        yield "127.0.0.1", port
