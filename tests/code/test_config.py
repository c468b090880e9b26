"""Config: every shipped profile loads; unknown and invalid keys fail with a message naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[2]
PROFILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_shipped_profile_loads(path: Path) -> None:
    p = load_params(path)
    assert isinstance(p, Params)
    assert 10 in p.evaluate.k_values


def test_profiles_set_every_key_explicitly() -> None:
    """params.yaml is the documented source of every knob: it names each one."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params().model_dump()

    def keys(d: dict, prefix: str = "") -> set[str]:  # type: ignore[type-arg]
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    assert keys(defaults) <= keys(raw)


def _write(tmp_path: Path, data: object) -> Path:
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def test_unknown_key_is_rejected_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key `data.chunk.chunk_token`"):
        load_params(_write(tmp_path, {"data": {"chunk": {"chunk_token": 100}}}))


def test_invalid_value_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train_chat.batch_size"):
        load_params(_write(tmp_path, {"train_chat": {"batch_size": 0}}))


def test_overlap_must_be_smaller_than_chunk(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overlap_tokens"):
        load_params(_write(tmp_path, {"data": {"chunk": {"chunk_tokens": 64, "overlap_tokens": 64}}}))


def test_recall_at_10_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must include 10"):
        load_params(_write(tmp_path, {"evaluate": {"k_values": [1, 5]}}))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_params(bad)


def test_corpus_dir_relative_to_project(tmp_path: Path) -> None:
    p = load_params(_write(tmp_path, {"data": {"corpus_dir": "docs"}}))
    assert p.data.corpus_path() == ROOT / "docs"
    p = load_params(_write(tmp_path, {"data": {"corpus_dir": str(tmp_path)}}))
    assert p.data.corpus_path() == tmp_path


def test_the_served_embedder_variant_must_be_indexed(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["index"]["variants"] = ["float"]
    raw["serving"]["embedder_variant"] = "int8"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"embedder_variant 'int8' has no index: add it to index.variants"):
        load_params(tmp_path / "p.yaml")
    raw["index"]["variants"] = ["int8", "int8"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"index.variants.*name each variant once"):
        load_params(tmp_path / "p.yaml")
