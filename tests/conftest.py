"""Test-wide settings: offline, quiet, and a helper to make a private copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def project_files() -> list[str]:
    """Files git would commit: tracked plus untracked-but-not-ignored (so uncommitted work is tested too)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def copy_project(dest: Path) -> Path:
    """Copy the project's source (no artifacts, no state) into `dest` and make it a git repo."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=dest, check=True)
    return dest


def project_env(root: Path) -> dict[str, str]:
    """Environment for a subprocess working in a copy: its own MLflow database, the venv's tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODELPLATFORM_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    """Run a command in a project copy; fail the test with its output tail when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real pipeline on the tiny profile, run once per session in a private copy of the project.

    Shared by the end-to-end pipeline tests and the serving tests (which serve its champions).
    """
    repo = copy_project(tmp_path_factory.mktemp("project"))
    shutil.copy(repo / "profiles" / "tiny.yaml", repo / "params.yaml")
    run(["dvc", "repro"], repo)
    return repo


@pytest.fixture(scope="session")
def base_dir(request: pytest.FixtureRequest) -> Path:
    """The base models: this checkout's artifacts/base when the pipeline ran here, else the tiny pipeline copy's
    (so a clean clone runs these tests too instead of skipping them)."""
    from core import paths

    if (paths.BASE_CHAT / "model.safetensors").exists() and (paths.BASE_EMBEDDER / "modules.json").exists():
        return paths.BASE_CHAT.parent
    return Path(request.getfixturevalue("pipeline")) / "artifacts" / "base"
