"""Model layer without the registry: cache fallback when it is unreachable, and the index/embedder check."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from core.config import IndexParams, load_params
from core.errors import StartupError
from core.vectorstore import ActiveIndex, chroma_client, switch_active
from serving.registry import ONNX_DIR, ServedModel, fetch, open_index, serve_embedder
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


def test_retrieval_unit_must_match_the_served_embedder_and_the_index(tmp_path: Path) -> None:
    from core.lexical import LexicalIndex
    from core.retrieval_params import RetrievalParams
    from core.retrieval_unit import RetrievalConfig, write_unit
    from serving.registry import open_retrieval

    LexicalIndex.build(["c1"], ["json dumps"]).save(tmp_path / "lex")
    config = RetrievalConfig.of(
        RetrievalParams(),
        embedder_name="embedder",
        embedder_version="2",
        chunks_md5="abc",
        chunking={},
        mode="hybrid",
        metric="mrr@10",
        scores={},
        reasons=[],
    )
    (tmp_path / "chunks.parquet").write_bytes(b"chunks")
    write_unit(tmp_path / "unit", config, tmp_path / "lex", tmp_path / "chunks.parquet")
    retrieval = ServedModel("retrieval", "champion", "7", tmp_path / "unit", False)
    embedder = ServedModel("embedder", "champion", "2", tmp_path, False)
    index = ActiveIndex("chunks-v2-abc", "embedder", "2", "abc", 1)
    got, lexical = open_retrieval(retrieval, embedder, index)
    assert got.mode == "hybrid" and lexical.ids == ["c1"]
    with pytest.raises(
        StartupError, match=r"searches with embedder version 2, but serving would load embedder version 3"
    ):
        open_retrieval(retrieval, dataclasses.replace(embedder, version="3"), index)
    with pytest.raises(StartupError, match=r"rebuild the index"):
        open_retrieval(retrieval, embedder, dataclasses.replace(index, data_md5="other"))
    with pytest.raises(StartupError, match="cannot read retrieval version 7"):
        open_retrieval(dataclasses.replace(retrieval, path=tmp_path / "lex"), embedder, index)


def test_the_embedder_backend_picks_the_runtime(base_dir: Path, tmp_path: Path) -> None:
    """auto: ONNX Runtime on a CPU (exported once into the version's folder, then opened without the torch model),
    sentence-transformers on a GPU; onnx on a GPU is a start-up error naming the fix."""
    from sentence_transformers import SentenceTransformer

    from core.onnx_embedder import OnnxEmbedder

    info = ServedModel("embedder", "champion", "3", shutil.copytree(base_dir / "embedder", tmp_path / "3"), False)
    assert isinstance(serve_embedder(info, "torch", "cpu"), SentenceTransformer)
    with pytest.raises(StartupError, match=r"onnx runs on the CPU.*use auto"):
        serve_embedder(info, "onnx", "cuda:0")
    assert not (info.path / ONNX_DIR).exists()  # nothing exported for a GPU or for torch
    served = serve_embedder(info, "auto", "cpu")
    assert isinstance(served, OnnxEmbedder) and served.method == "onnxruntime-fp32"
    exported = (info.path / ONNX_DIR / "model.onnx").stat().st_mtime_ns
    (info.path / "model.safetensors").unlink()  # a restart opens the export; the torch weights are not read again
    again = serve_embedder(info, "onnx", "cpu")
    assert isinstance(again, OnnxEmbedder) and (info.path / ONNX_DIR / "model.onnx").stat().st_mtime_ns == exported


def test_an_unwritable_cache_serves_torch_under_auto_and_fails_onnx_clearly(base_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    info = ServedModel("embedder", "champion", "3", shutil.copytree(base_dir / "embedder", tmp_path / "3"), False)
    # a file where the export's folder should go (tests run as root, whom a read-only mode would not stop)
    (info.path / ONNX_DIR).write_text("not a folder")
    assert isinstance(serve_embedder(info, "auto", "cpu"), SentenceTransformer)
    with pytest.raises(StartupError, match="cannot export embedder v3 to ONNX into"):
        serve_embedder(info, "onnx", "cpu")
    assert not list(info.path.glob(f"{ONNX_DIR}.partial*"))  # no partial export left behind


def test_the_int8_embedder_variant_is_served_only_where_it_exists(tmp_path: Path) -> None:
    """`serving.embedder_variant: int8`: the unit must name an int8 form, the int8 pointer must exist, and a GPU server
    refuses it; each failure is a start-up error naming the fix."""
    from core.retrieval_params import RetrievalParams
    from core.retrieval_unit import RetrievalConfig
    from serving.registry import unit_embedder

    s = _settings(tmp_path)
    s = dataclasses.replace(s, serving=s.serving.model_copy(update={"embedder_variant": "int8"}))
    fields = dict(chunks_md5="abc", chunking={}, mode="dense", metric="mrr@10", scores={}, reasons=[])
    plain = RetrievalConfig.of(RetrievalParams(), embedder_name="embedder", embedder_version="2", **fields)
    retrieval = ServedModel("retrieval", "champion", "7", tmp_path, False)
    with pytest.raises(StartupError, match=r"names no int8 form of embedder version 2.*embedder_variant: float"):
        unit_embedder(retrieval, plain, "int8")
    with_int8 = plain.model_copy(update={"embedder_int8_name": "embedder-int8", "embedder_int8_version": "5"})
    assert unit_embedder(retrieval, with_int8, "int8") == ("embedder-int8", "5")
    assert unit_embedder(retrieval, with_int8, "float") == ("embedder", "2")
    int8 = ServedModel("embedder-int8", "champion", "5", tmp_path / "5", False)
    client = chroma_client(s.index)
    client.create_collection("chunks-v2-abc", embedding_function=None)
    switch_active(client, ActiveIndex("chunks-v2-abc", "embedder", "2", "abc", 0))  # only the float index
    with pytest.raises(StartupError, match=r"no active int8 Chroma index.*list int8 in index.variants"):
        open_index(s, int8)
    client.create_collection("chunks-int8-v5-abc", embedding_function=None)
    switch_active(client, ActiveIndex("chunks-int8-v5-abc", "embedder-int8", "5", "abc", 0), "int8")
    assert open_index(s, int8)[0].collection == "chunks-int8-v5-abc"
    with pytest.raises(StartupError, match=r"embedder_variant: int8 runs on the CPU"):
        serve_embedder(int8, "auto", "cuda:0", "int8")
    with pytest.raises(StartupError, match=r"cannot open embedder-int8 version 5"):
        serve_embedder(int8, "auto", "cpu", "int8")  # its folder holds no ONNX embedder


def test_the_int8_reranker_variant_is_served_only_where_it_exists(tmp_path: Path) -> None:
    """`serving.reranker_variant: int8`: nothing to serve when the unit does not rerank; otherwise the unit must name
    an int8 form and the server must run on the CPU; each failure is a start-up error naming the fix."""
    from core.retrieval_params import RetrievalParams
    from core.retrieval_unit import RetrievalConfig
    from serving.registry import serve_reranker, unit_reranker

    s = _settings(tmp_path)
    s = dataclasses.replace(s, serving=s.serving.model_copy(update={"reranker_variant": "int8"}))
    fields = dict(chunks_md5="abc", chunking={}, mode="hybrid", metric="mrr@10", scores={}, reasons=[])
    plain = RetrievalConfig.of(RetrievalParams(), embedder_name="embedder", embedder_version="2", **fields)
    retrieval = ServedModel("retrieval", "champion", "7", tmp_path, False)
    assert unit_reranker(retrieval, plain, "int8", "cpu") is None  # no reranking: the variant changes nothing
    assert serve_reranker(None, s, "cpu") == (None, None)
    reranks = plain.model_copy(update={"reranker_name": "reranker", "reranker_version": "3"})
    assert unit_reranker(retrieval, reranks, "float", "cuda:0") == ("reranker", "3")
    with pytest.raises(StartupError, match=r"names no int8 form of reranker version 3.*reranker_variant: float"):
        unit_reranker(retrieval, reranks, "int8", "cpu")
    with_int8 = reranks.model_copy(update={"reranker_int8_name": "reranker-int8", "reranker_int8_version": "4"})
    assert unit_reranker(retrieval, with_int8, "int8", "cpu") == ("reranker-int8", "4")
    with pytest.raises(StartupError, match=r"reranker_variant: int8 runs on the CPU"):
        unit_reranker(retrieval, with_int8, "int8", "cuda:0")
    _cache(tmp_path / "cache", "reranker-int8", "4")  # cached, but without the ONNX folder
    with pytest.raises(StartupError, match=r"cannot open reranker-int8 version 4.*onnx_reranker.json"):
        serve_reranker(("reranker-int8", "4"), s, "cpu")
