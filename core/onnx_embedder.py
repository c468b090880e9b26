"""The embedder on ONNX Runtime: a sentence-transformers embedder exported to ONNX, in fp32 (how the server runs the
champion on a CPU: `serving.embedder_backend`) or with its weights quantised to int8 per output channel, and an
encoder with sentence-transformers' `encode` arguments over an ONNX Runtime session.

Why ONNX Runtime int8 (`python -m benchmarks.embedder_variants`, the fine-tuned MiniLM, 2 threads):

    variant                                  chunks/s  one query  cosine with fp32   held-out dense MRR@10
    fp32 sentence-transformers (served)        25.9    13.2 ms    1.0               0.8261
    int8 PyTorch dynamic, every Linear         42.4     7.2 ms    0.918             0.8151
    int8 ONNX Runtime, per channel             51.1     3.4 ms    0.993             0.8405

Most of sentence-transformers' 13 ms for one query is Python around a 3 ms forward; the session runs the graph in
C++. Exporting needs the `onnx` package; running needs only `onnxruntime`. Dynamic quantisation scales each
matrix multiply's activations per batch, so a text's vector moves slightly with the texts batched with it (cosine
above 0.98 between batchings in tests/code/test_onnx_embedder.py); the same batch gives the same vectors.

The fp32 form computes sentence-transformers' vectors (within 1e-5 at any batch size: tests/code/test_onnx_embedder.py),
so it queries an index built by sentence-transformers, and is faster where the Python around the forward is a large
share (`python -m benchmarks.peers --only limits`, 2026-11-30, 2 threads): one text 3.23 ms against 9.97, and at
the best batch (256 short texts) 860 texts/s against 822. Served (`--only embed`, wrk): one client 183.8 texts/s
against 63.9, 64 clients 328.0 against 276.6. The export takes ~1 s, once per served version.

The saved form is one folder: `model.onnx` (fp32 or int8), the tokenizer's files, and `onnx_embedder.json` (method,
pooling, window, dimension). Only the module stack our embedders have is supported: Transformer, mean Pooling,
Normalize; `quantize` refuses anything else rather than export something that embeds differently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from sentence_transformers import SentenceTransformer

CARD = "onnx_embedder.json"
MODEL_FILE = "model.onnx"
METHOD = "onnxruntime-dynamic-int8-per-channel"
FP32_METHOD = "onnxruntime-fp32"
_STACK = ("Transformer", "Pooling", "Normalize")


def is_onnx_folder(folder: Path) -> bool:
    """Whether `folder` holds what `quantize` writes."""
    return (folder / CARD).is_file() and (folder / MODEL_FILE).is_file()


def find_onnx_folder(model_dir: Path, card: str = CARD) -> Path:
    """The ONNX model folder (one with `card` and `model.onnx`: an embedder's, or core/onnx_reranker.py's) in a
    downloaded registry version (MLflow keeps a pyfunc's artifact under `artifacts/<name>/`), or `model_dir` itself
    when it is one.

    Raises:
        FileNotFoundError: neither holds one.
    """
    for candidate in (model_dir, *sorted((model_dir / "artifacts").glob("*"))):
        if (candidate / card).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no ONNX model ({card} and {MODEL_FILE}) in {model_dir} or its artifacts/")


def quantize_file(fp32: Path, dest: Path) -> Path:
    """`fp32`'s graph with int8 weights per output channel and dynamic int8 activations, written to `dest`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the quantiser logs a line per tensor it leaves alone (~130 for MiniLM) on the root logger, at INFO
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        quantize_dynamic(str(fp32), str(dest), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return dest


def cpu_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU, over `threads` (default: torch's) intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_stack(source: Path) -> int:
    """The embedding dimension, once `source`'s modules are Transformer → mean Pooling → Normalize.

    Raises:
        ValueError: another module stack or pooling.
    """
    modules = json.loads((source / "modules.json").read_text())
    kinds = tuple(m["type"].rsplit(".", 1)[-1] for m in modules)
    if kinds != _STACK:
        raise ValueError(f"{source}: modules {kinds}; the int8 export supports {_STACK} only")
    pooling = json.loads((source / modules[1]["path"] / "config.json").read_text())
    if pooling.get("pooling_mode", "mean") != "mean":
        raise ValueError(f"{source}: pooling {pooling.get('pooling_mode')!r}; the int8 export supports mean only")
    return int(pooling["embedding_dimension"])


def supported(model: SentenceTransformer) -> str | None:
    """Why `model` cannot be exported (another module stack than Transformer -> mean Pooling -> Normalize), or None."""
    kinds = tuple(type(m).__name__ for m in model)
    if kinds != _STACK:
        return f"modules {kinds}; the ONNX export supports {_STACK} only"
    if getattr(model[1], "pooling_mode", "mean") != "mean":
        return f"pooling {model[1].pooling_mode!r}; the ONNX export supports mean only"
    return None


def export_fp32(model: SentenceTransformer, dest: Path) -> Path:
    """Write `model` as an fp32 ONNX embedder folder at `dest`, whole or not at all: built in a folder of this
    process's own beside it, then renamed, so processes exporting together (workers sharing a cache) never mix
    files; when another one got there first, its export is kept.

    Raises:
        ValueError: `model`'s modules are not Transformer -> mean Pooling -> Normalize (`supported`).
        OSError: `dest`'s folder cannot be written.
    """
    if reason := supported(model):
        raise ValueError(reason)
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        export(model, tmp / MODEL_FILE)
        model.tokenizer.save_pretrained(str(tmp))
        _write_card(tmp, model, FP32_METHOD)
        tmp.rename(dest)
    except OSError:
        if not is_onnx_folder(dest):  # not another process's complete export: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _write_card(folder: Path, model: SentenceTransformer, method: str, **extra: Any) -> None:
    """The folder's `onnx_embedder.json`: how it was made and what `OnnxEmbedder` needs to encode like `model`."""
    card = {"method": method, "pooling": "mean", "normalize": True, "max_seq_length": model.max_seq_length,
            "dimension": model.get_embedding_dimension(), **extra}  # fmt: skip
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")


def export(model: SentenceTransformer, path: Path) -> Path:
    """The transformer of `model` as an fp32 ONNX graph at `path` (inputs: token ids and attention mask; output:
    the last hidden state). Pooling and normalising stay outside the graph, in `OnnxEmbedder.encode`."""

    class LastHidden(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    transformer: Any = model[0].auto_model
    example = model.tokenizer(["an example sentence"], return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(  # the TorchScript exporter: the dynamo one fails on this BERT's mask code in torch 2.13
        LastHidden(transformer.eval()), (example["input_ids"], example["attention_mask"]), str(path),
        input_names=["input_ids", "attention_mask"], output_names=["hidden"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes}, dynamo=False, opset_version=17,
    )  # fmt: skip
    return path


def quantize(source: Path, dest: Path) -> Path:
    """Write the int8 form of the sentence-transformers embedder in `source` into `dest` (created).

    Raises:
        ValueError: `source`'s modules are not Transformer → mean Pooling → Normalize.
    """
    _check_stack(source)
    model = SentenceTransformer(str(source), device="cpu")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(model, Path(tmp) / "fp32.onnx")
        quantize_file(fp32, dest / MODEL_FILE)
    model.tokenizer.save_pretrained(str(dest))
    _write_card(dest, model, METHOD, quantized_from=str(source))
    return dest


class OnnxEmbedderModel(PythonModel):  # type: ignore[misc]
    """The int8 embedder's MLflow pyfunc: a list of texts -> one unit-length vector per text (lists of floats).
    `mlflow.pyfunc.load_model("models:/embedder-int8@champion").predict(["how do I ..."])`."""

    def load_context(self, context: Any) -> None:
        self.model = OnnxEmbedder(Path(context.artifacts["embedder_int8"]))

    def __getstate__(self) -> dict[str, Any]:
        # MLflow pickles this object after trying the input example on it; the ONNX Runtime session it loaded then
        # cannot be pickled, and is loaded again from the artifact anyway.
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[list[float]]:
        texts = [str(t) for t in model_input]
        return np.asarray(self.model.encode(texts)).tolist() if texts else []


class OnnxEmbedder:
    """`quantize`'s or `export_fp32`'s folder as an embedder: `encode` takes sentence-transformers' arguments and
    returns the same kind of vectors (mean-pooled over the attention mask, unit length). Runs on the CPU."""

    device = "cpu"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        card = json.loads((folder / CARD).read_text())
        if card.get("method") not in (METHOD, FP32_METHOD):
            raise ValueError(f"{folder}/{CARD}: method {card.get('method')!r} is not {METHOD!r} or {FP32_METHOD!r}")
        self.method: str = card["method"]
        self.session = cpu_session(folder / MODEL_FILE, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.max_seq_length: int = card["max_seq_length"]
        self.dimension: int = card["dimension"]

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    def get_embedding_dimension(self) -> int:  # sentence-transformers 6's name
        return self.dimension

    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        convert_to_tensor: bool = False,
        **_: Any,
    ) -> np.ndarray | torch.Tensor:
        """(len(sentences), dimension) float32 vectors, unit length (the model ends in Normalize), in the order given.

        Batches are formed from texts of similar length, longest first, as sentence-transformers forms them.
        """
        texts = list(sentences)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                 max_length=self.max_seq_length, return_tensors="np")  # fmt: skip
            feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
            hidden = self.session.run(None, feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            out[idx] = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)  # the model's Normalize module
        return torch.from_numpy(out) if convert_to_tensor else out
