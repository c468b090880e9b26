"""The int8 ONNX reranker (core/onnx_reranker.py) on a real cross-encoder (the base MiniLM with a one-logit head):
its scores are the float model's within quantisation error, in the order given, at any batch size; it refuses a
cross-encoder it would score differently; and it logs as the MLflow pyfunc stage register registers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers.cross_encoder import CrossEncoder

from core.onnx_reranker import OnnxReranker, find_folder, quantize

QUERY = "How do I read a file line by line?"
PASSAGES = [
    "Iterate over the file object: for line in open(path) reads one line at a time.",
    "json.dumps serialises an object to a JSON formatted string.",
    "The with statement wraps a block with methods defined by a context manager, so that common try/finally usage "
    "patterns can be encapsulated for convenient reuse; it is used for files, locks and database transactions.",
    "zip archives",
    "Lists are mutable sequences, typically used to store collections of homogeneous items.",
]
PAIRS = [(QUERY, p) for p in PASSAGES]


def _cross_encoder(base_dir: Path, folder: Path, labels: int = 1) -> Path:
    torch.manual_seed(0)  # the new head's weights
    CrossEncoder(str(base_dir / "embedder"), num_labels=labels, device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def float_folder(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cross_encoder(base_dir, tmp_path_factory.mktemp("reranker"))


@pytest.fixture(scope="module")
def int8_folder(float_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize(float_folder, tmp_path_factory.mktemp("reranker-int8"))


def test_int8_scores_are_the_float_models_in_order_at_any_batch_size(float_folder: Path, int8_folder: Path) -> None:
    expected = CrossEncoder(str(float_folder), device="cpu").predict(PAIRS, show_progress_bar=False)
    int8 = OnnxReranker(int8_folder)
    one_batch = int8.predict(PAIRS, batch_size=32)
    assert one_batch.shape == (len(PAIRS),) and ((one_batch > 0) & (one_batch < 1)).all()  # sigmoid, as float
    # the default run's trained reranker: within 0.006 over 240 held-out pairs (core/onnx_reranker.py)
    np.testing.assert_allclose(one_batch, expected, atol=0.02)
    for batch in (1, 2):  # the served batch sizes: activations are scaled per batch, so scores move a little
        np.testing.assert_allclose(int8.predict(PAIRS, batch_size=batch), one_batch, atol=0.01)
    reversed_ = int8.predict(PAIRS[::-1], batch_size=1)  # sorted by length inside; returned in the order given
    np.testing.assert_array_equal(reversed_[::-1], int8.predict(PAIRS, batch_size=1))
    assert int8.predict([]).shape == (0,)


def test_a_cross_encoder_with_two_labels_is_refused(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 labels"):
        quantize(_cross_encoder(base_dir, tmp_path / "two", labels=2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_int8_reranker_gate_registers_only_under_the_drop_limit() -> None:
    from core.config import load_params
    from training.quantize_reranker import gate

    p = load_params()
    limit = p.gate.reranker_int8_max_drop
    assert gate(p, 0.60, 0.61)[0] and "+0.0100" in gate(p, 0.60, 0.61)[1]
    assert gate(p, 0.60, 0.60 - limit / 2)[0]
    passed, reason = gate(p, 0.60, 0.60 - limit)
    assert not passed and "not registered" in reason and "float reranker" in reason


def test_the_int8_reranker_is_measured_only_when_the_float_one_is_served() -> None:
    """Stage quantize_reranker measures and gates the int8 form only when the float reranker passes its own gate on
    evaluate's figures (the one register applies): otherwise nothing would serve either form."""
    from core.config import load_params
    from evaluation.register_retrieval import reranker_passes

    p = load_params()
    row = {"mrr@10": 0.80, "recall@10": 0.95}
    metrics = {"embedder": {"finetuned": row}, "lexical": row, "hybrid": {"finetuned": {**row, "mrr@10": 0.84}}}
    served, why = reranker_passes(p, metrics | {"reranked": {"mrr@10": 0.90, "recall@10": 0.95}})
    assert served and "vs hybrid 0.8400" in why and "pass" in why
    served, why = reranker_passes(p, metrics | {"reranked": {"mrr@10": 0.62, "recall@10": 0.95}})
    assert not served and "FAIL, served without the reranker" in why


def test_the_int8_folder_logs_as_a_pyfunc_found_in_its_registry_download(int8_folder: Path, tmp_path: Path) -> None:
    """What stage register logs (core.tracking.log_int8_reranker_model) loads back with `mlflow.pyfunc.load_model`
    and scores like the folder; the server finds the folder inside a downloaded version (artifacts/<name>/)."""
    import mlflow

    from core.tracking import log_int8_reranker_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("int8", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            uri = log_int8_reranker_model(int8_folder, ["onnxruntime", "transformers", "numpy"])
        rows = [{"query": q, "passage": d} for q, d in PAIRS[:2]]
        predicted = mlflow.pyfunc.load_model(uri).predict(rows)
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_allclose(predicted, OnnxReranker(int8_folder).predict(PAIRS[:2]), atol=1e-6)
    version = tmp_path / "3"
    shutil.copytree(int8_folder, version / "artifacts" / "reranker_int8")
    assert find_folder(version) == version / "artifacts" / "reranker_int8" and find_folder(int8_folder) == int8_folder
    with pytest.raises(FileNotFoundError, match=r"onnx_reranker\.json"):
        find_folder(tmp_path / "empty")
