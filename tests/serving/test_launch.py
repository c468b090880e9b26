"""serving/launch.py: a server whose service fails at start-up is reported at once, with the reason, and stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from serving.launch import BENTOML_STARTUP_FAILED, ServerStartError, free_port, started_process

# Stands in for `bentoml serve` after a StartupError: the worker's line in the log, then a process that keeps
# running (BentoML's process manager respawns the worker; the server never exits and never becomes ready).
FAILING = (
    "import os, signal, sys\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "print('core.errors.StartupError: no active int8 Chroma index: build it (`dvc repro index`)', flush=True)\n"
    f"print('[ERROR] [entry_service:modelplatform:1] {BENTOML_STARTUP_FAILED}. Exiting.', flush=True)\n"
    "signal.pause()\n"  # until started_process stops it: no timer involved
)


def test_a_server_that_failed_to_start_is_reported_with_its_reason_and_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = [sys.executable, "-c", FAILING, str(pid_file)]
    url = f"http://127.0.0.1:{free_port()}"
    server = started_process(argv, tmp_path, tmp_path / "log", url, "/readyz", None, 3600, BENTOML_STARTUP_FAILED)
    with pytest.raises(ServerStartError) as raised, server:  # not "not ready after 3600s": no hang guard fired
        pytest.fail("a server that never became ready was yielded")
    message = str(raised.value)
    assert "failed to start" in message
    assert "no active int8 Chroma index" in message  # the reason reaches whoever started it
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # stopped, not left running (reaped by started_process)
        os.kill(pid, 0)
