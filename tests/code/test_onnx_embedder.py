"""The ONNX embedders (core/onnx_embedder.py) on the real base MiniLM: the fp32 export gives sentence-transformers'
vectors (what the server runs: the index was built with those); the int8 one's are the fp32 model's within
quantisation error, in the order given, at any batch size; and both refuse a model they would embed wrongly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from core.onnx_embedder import FP32_METHOD, OnnxEmbedder, export_fp32, is_onnx_folder, quantize

TEXTS = [
    "How do I read a file line by line?",
    "json.dumps serialises an object to a JSON formatted string.",
    "The with statement wraps a block with methods defined by a context manager, so that common try/finally usage "
    "patterns can be encapsulated for convenient reuse; it is used for files, locks and database transactions.",
    "zip archives",
    "Lists are mutable sequences, typically used to store collections of homogeneous items.",
]


@pytest.fixture(scope="module")
def int8_folder(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize(base_dir / "embedder", tmp_path_factory.mktemp("embedder-int8"))


def test_int8_vectors_match_fp32_in_order_at_any_batch_size(base_dir: Path, int8_folder: Path) -> None:
    assert is_onnx_folder(int8_folder) and not is_onnx_folder(base_dir / "embedder")
    fp32 = SentenceTransformer(str(base_dir / "embedder"), device="cpu").encode(TEXTS, normalize_embeddings=True)
    int8 = OnnxEmbedder(int8_folder)
    one_batch = int8.encode(TEXTS, batch_size=32)
    assert isinstance(one_batch, np.ndarray)
    assert one_batch.shape == (len(TEXTS), int8.get_sentence_embedding_dimension())
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, atol=1e-5)
    cosines = (one_batch * fp32).sum(1)
    assert cosines.min() > 0.97, cosines  # measured on the fine-tuned model: 0.993 mean over 512 chunks
    # each text's nearest fp32 vector is its own: quantisation moved none of them onto another text's
    assert ((one_batch @ fp32.T).argmax(1) == np.arange(len(TEXTS))).all()
    pairs = int8.encode(TEXTS, batch_size=2, convert_to_tensor=True)
    assert isinstance(pairs, torch.Tensor)
    # dynamic quantisation scales activations per batch: a text's vector moves a little with its batch-mates
    assert (pairs.numpy() * one_batch).sum(1).min() > 0.98
    np.testing.assert_array_equal(int8.encode(TEXTS, batch_size=2), pairs.numpy())  # the same batches: the same


def _cls_pooled(base_dir: Path, tmp_path: Path) -> Path:
    """A copy of the base embedder that pools the CLS token instead of the mean."""
    source = tmp_path / "cls-pooled"
    shutil.copytree(base_dir / "embedder", source)
    config = source / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pooling_mode": "cls"}))
    return source


def test_a_model_with_another_pooling_is_refused(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling 'cls'"):
        quantize(_cls_pooled(base_dir, tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fp32_export_gives_sentence_transformers_vectors(base_dir: Path, tmp_path: Path) -> None:
    model = SentenceTransformer(str(base_dir / "embedder"), device="cpu")
    folder = export_fp32(model, tmp_path / "onnx-fp32")
    assert is_onnx_folder(folder)
    onnx = OnnxEmbedder(folder)
    assert onnx.method == FP32_METHOD and onnx.get_embedding_dimension() == model.get_embedding_dimension()
    expected = model.encode(TEXTS, normalize_embeddings=True)
    for batch in (32, 2, 1):  # no quantisation: batch-mates change nothing beyond float rounding
        np.testing.assert_allclose(onnx.encode(TEXTS, batch_size=batch), expected, atol=1e-5)
    # a second process exporting the same version finds the first one's export complete and keeps it
    first = (folder / "model.onnx").stat().st_mtime_ns
    assert export_fp32(model, folder) == folder and (folder / "model.onnx").stat().st_mtime_ns == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx-fp32"]


def test_fp32_export_refuses_another_pooling_and_writes_nothing(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling 'cls'"):
        export_fp32(SentenceTransformer(str(_cls_pooled(base_dir, tmp_path)), device="cpu"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial*"))


def test_the_int8_gate_registers_only_under_the_drop_limit() -> None:
    from core.config import load_params
    from training.quantize_embedder import gate

    p = load_params()
    limit = p.gate.embedder_int8_max_drop
    passed, reason = gate(p, 0.80, 0.81)  # better than float: passes
    assert passed and "+0.0100" in reason
    passed, reason = gate(p, 0.80, 0.80 - limit / 2)
    assert passed
    passed, reason = gate(p, 0.80, 0.80 - limit)
    assert not passed and "not registered" in reason and "float embedder" in reason


def test_the_registered_folder_is_found_inside_a_pyfunc_version(int8_folder: Path, tmp_path: Path) -> None:
    """A registry download keeps the pyfunc's artifact under artifacts/<name>/; the loaders find the folder there."""
    from core.loading import load_onnx_embedder
    from core.onnx_embedder import find_onnx_folder

    version = tmp_path / "5"
    shutil.copytree(int8_folder, version / "artifacts" / "embedder_int8")
    assert find_onnx_folder(version) == version / "artifacts" / "embedder_int8"
    assert find_onnx_folder(int8_folder) == int8_folder
    loaded = load_onnx_embedder(version)
    np.testing.assert_array_equal(loaded.encode(["json dumps"]), OnnxEmbedder(int8_folder).encode(["json dumps"]))
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        find_onnx_folder(tmp_path / "empty")


def test_the_int8_folder_logs_as_an_mlflow_pyfunc_that_embeds_like_it(int8_folder: Path, tmp_path: Path) -> None:
    """What stage register logs (core.tracking.log_int8_embedder_model): a pyfunc that loads back in a new process's
    way (`mlflow.pyfunc.load_model`) and predicts the folder's own vectors."""
    import mlflow

    from core.tracking import log_int8_embedder_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("int8", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            uri = log_int8_embedder_model(int8_folder, ["onnxruntime", "transformers", "numpy"])
        predicted = np.asarray(mlflow.pyfunc.load_model(uri).predict(TEXTS[:2]))
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_allclose(predicted, OnnxEmbedder(int8_folder).encode(TEXTS[:2]), atol=1e-6)
