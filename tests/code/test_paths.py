"""core/paths.py and dvc.yaml name the same pipeline outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core import paths

ROOT = Path(__file__).resolve().parents[2]
# Outputs under artifacts/ that core/paths.py need not name, and why.
NOT_IN_PATHS = {"artifacts/corpus": "the default `data.corpus_dir` (params.yaml), written by data/sample_corpus.py"}


def _names(entries: list[Any]) -> set[str]:
    """Paths of a stage's deps/outs/metrics/plots list (an entry is a path, or a one-key mapping with options)."""
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def _dvc() -> tuple[set[str], set[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs: set[str] = set()
    deps: set[str] = set()
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            outs |= _names(stage.get(key, []))
        deps |= _names(stage.get("deps", []))
    under = {p for p in outs | deps if p.startswith("artifacts/")}
    return {p for p in outs if p in under}, {p for p in deps if p in under}


def _path_constants() -> dict[str, str]:
    """Every artifacts/ path core/paths.py names that is not just a parent of other names (ARTIFACTS, DATASETS)."""
    found = {
        name: value.relative_to(paths.PROJECT_ROOT).as_posix()
        for name, value in vars(paths).items()
        if name.isupper() and isinstance(value, Path) and value.is_relative_to(paths.ARTIFACTS)
    }
    parents = {p for p in found.values() for q in found.values() if q != p and q.startswith(p + "/")}
    return {name: rel for name, rel in found.items() if rel not in parents}


def test_every_path_in_core_paths_is_a_dvc_output() -> None:
    outs, _ = _dvc()
    missing = {name: rel for name, rel in _path_constants().items() if rel not in outs}
    assert not missing, f"core/paths.py names paths no dvc.yaml stage writes: {missing}"


def test_every_dvc_output_is_named_in_core_paths() -> None:
    outs, _ = _dvc()
    named = set(_path_constants().values())
    missing = outs - named - set(NOT_IN_PATHS)
    assert not missing, f"dvc.yaml outputs that core/paths.py does not name: {sorted(missing)}"


def test_every_artifacts_dependency_is_some_stage_output() -> None:
    outs, deps = _dvc()
    assert deps <= outs, f"dvc.yaml deps under artifacts/ that no stage writes: {sorted(deps - outs)}"
