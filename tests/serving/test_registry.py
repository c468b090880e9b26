"""Model layer without the registry: cache fallback when it is unreachable, and the index/embedder check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core.config import IndexParams, load_params
from core.errors import StartupError
from core.vectorstore import ActiveIndex, chroma_client, switch_active
from serving.registry import ServedModel, fetch, open_index
from serving.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> Settings:
    s = load_settings(load_params(ROOT / "params.yaml"), environ={})
    serving = s.serving.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    index = IndexParams(chroma_path=str(tmp_path / "chroma"))
    return dataclasses.replace(
        s, serving=serving, index=index, tracking_uri=f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}"
    )


def _cache(root: Path, name: str, version: str) -> None:
    (root / name / version).mkdir(parents=True)
    (root / name / version / "_complete.json").write_text(json.dumps({"version": version}))


def test_unreachable_registry_falls_back_to_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = _settings(tmp_path)
    with pytest.raises(StartupError, match="no cached version"):
        fetch("chat", "champion", s)
    for v in ("2", "10"):
        _cache(s.cache_root(), "chat", v)
    (s.cache_root() / "chat" / "9.partial-1").mkdir()  # an interrupted download is never used
    served = fetch("chat", "champion", s)
    assert (served.version, served.from_cache_only) == ("10", True)  # the newest complete one
    assert "registry unreachable" in caplog.text
    (s.cache_root() / "chat" / "alias-champion.json").write_text(json.dumps({"version": "2"}))
    assert fetch("chat", "champion", s).version == "2"  # what the alias pointed at last time wins
    assert not (tmp_path / "gone").exists()  # no empty registry database was created on the way


def test_index_built_by_another_embedder_version_fails_startup(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    embedder = ServedModel("embedder", "champion", "3", tmp_path, False)
    with pytest.raises(StartupError, match="no active Chroma index"):
        open_index(s, embedder)
    client = chroma_client(s.index)
    client.create_collection("chunks-v2-abc", embedding_function=None)
    switch_active(client, ActiveIndex("chunks-v2-abc", "embedder", "2", "abc", 0))
    with pytest.raises(StartupError, match=r"built by embedder version 2.*embedder version 3"):
        open_index(s, embedder)
    active, coll = open_index(s, dataclasses.replace(embedder, version="2"))
    assert active.collection == coll.name == "chunks-v2-abc"
