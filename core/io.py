"""Atomic file writes: every artifact is written to a temporary sibling and renamed into place, so a
crash or a bad input never leaves a half-written file where a later stage (or DVC) would read it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` then rename onto `path`: a crash never leaves a half-written file.

    Args:
        path: the final file.
        write: a callable taking the temporary path (same folder, so `os.replace` is atomic).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be readable like any output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write `df` atomically; parquet holds no timestamps, so equal frames give equal bytes."""
    atomic_write(path, lambda tmp: df.write_parquet(tmp))


def write_json(obj: object, path: Path) -> None:
    """Write `obj` as sorted, indented JSON atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))
