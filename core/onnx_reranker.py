"""The reranker on ONNX Runtime with int8 weights: the fine-tuned cross-encoder (training/reranker.py) exported to
ONNX, its weights quantised to int8 per output channel with dynamic int8 activations (as core/onnx_embedder.py does
for the embedder), and a scorer with `CrossEncoder.predict`'s arguments and scores.

Why (the default run's reranker, 2 threads, p50 ms per question of 10 candidates, one question at a time; runs on
this shared host move by 10-20%):

    a probe: 24 queries, each with 10 random chunks      pairs per forward:   1     2    32 (one padded batch)
        CrossEncoder (torch)                                                474   348   570
        ONNX Runtime fp32                                                   357   369   584
        ONNX Runtime int8                                                   229   266   480
    48 held-out questions' hybrid candidates (`benchmarks.rag_latency.rerank_in_process`, 2026-12-01)
        CrossEncoder (torch)                                                      519   567
        ONNX Runtime int8                                                         324

Two things cost the reranker its 300 ms budget: padding (random chunks of 29 to 256 tokens in one batch are ten
256-token forwards) and fp32 matrix multiplies. Pairs sorted by length and scored in small batches remove the first
(`serving.rerank_batch_size`), which matters less for real candidates (hybrid's top 10 are similarly long: ~1,600
tokens a question); int8 the second: ~220 ms per 1,000 tokens, tokenising 4 ms of it. Its scores stay within 0.005
of the float model's (240 held-out pairs); stage `quantize_reranker` gates its reranked held-out retrieval against
the float reranker's.

The saved form is one folder: `model.onnx`, the tokenizer's files and `onnx_reranker.json` (method, window). Only
one-logit cross-encoders with a sigmoid (relevance in [0, 1], as ours) are supported; `quantize` refuses others.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from sentence_transformers.cross_encoder import CrossEncoder

from core.onnx_embedder import METHOD, MODEL_FILE, cpu_session, find_onnx_folder, quantize_file

CARD = "onnx_reranker.json"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def supported(model: CrossEncoder) -> str | None:
    """Why `model` cannot be exported (not one logit through a sigmoid), or None."""
    if model.num_labels != 1:
        return f"{model.num_labels} labels; the ONNX export supports one-logit cross-encoders only"
    if not isinstance(model.activation_fn, torch.nn.Sigmoid):
        return f"activation {type(model.activation_fn).__name__}; the ONNX export supports Sigmoid only"
    return None


def export(model: CrossEncoder, path: Path) -> tuple[str, ...]:
    """The cross-encoder's classifier as an fp32 ONNX graph at `path` (inputs: the tokenizer's; output: the logit).
    Returns the input names, in the graph's order."""
    inputs = tuple(k for k in _INPUTS if k in model.tokenizer("a query", "a passage"))

    class Logit(torch.nn.Module):
        def __init__(self, classifier: torch.nn.Module) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.classifier(**dict(zip(inputs, tensors, strict=True))).logits

    example = model.tokenizer(["a query"], ["a passage"], return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(  # the TorchScript exporter, as core/onnx_embedder.py's (the dynamo one fails on BERT's mask)
        Logit(cast(torch.nn.Module, model.model).eval()), tuple(example[k] for k in inputs), str(path),
        input_names=list(inputs), output_names=["logit"], dynamo=False, opset_version=17,
        dynamic_axes={**dict.fromkeys(inputs, axes), "logit": {0: "batch"}},
    )  # fmt: skip
    return inputs


def quantize(source: Path, dest: Path) -> Path:
    """Write the int8 form of the cross-encoder in `source` into `dest` (created).

    Raises:
        ValueError: `source` is not a one-logit sigmoid cross-encoder (`supported`).
    """
    model = CrossEncoder(str(source), device="cpu")
    if reason := supported(model):
        raise ValueError(f"{source}: {reason}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = export(model, Path(tmp) / "fp32.onnx")
        quantize_file(Path(tmp) / "fp32.onnx", dest / MODEL_FILE)
    model.tokenizer.save_pretrained(str(dest))
    card = {"method": METHOD, "activation": "sigmoid", "max_length": model.max_seq_length, "inputs": list(inputs),
            "quantized_from": str(source)}  # fmt: skip
    (dest / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return dest


def find_folder(model_dir: Path) -> Path:
    """The ONNX reranker folder in a downloaded registry version, or `model_dir` itself.

    Raises:
        FileNotFoundError: neither holds one.
    """
    return find_onnx_folder(model_dir, CARD)


class OnnxReranker:
    """`quantize`'s folder as a reranker: `predict` takes `CrossEncoder.predict`'s arguments and returns relevance
    probabilities in [0, 1] like it. Runs on the CPU."""

    device = "cpu"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        card = json.loads((folder / CARD).read_text())
        if card.get("method") != METHOD:
            raise ValueError(f"{folder}/{CARD}: method {card.get('method')!r} is not {METHOD!r}")
        self.method: str = card["method"]
        self.inputs: tuple[str, ...] = tuple(card["inputs"])
        self.max_seq_length: int = card["max_length"]
        self.session = cpu_session(folder / MODEL_FILE, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, **_: Any) -> np.ndarray:
        """One score per (query, passage) pair, in the order given. Batches are formed from pairs of similar
        length, longest first, as CrossEncoder forms them, so few positions are padding."""
        out = np.zeros(len(pairs), dtype=np.float32)
        order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
        for i in range(0, len(pairs), batch_size):
            idx = order[i : i + batch_size]
            enc = self.tokenizer([pairs[j][0] for j in idx], [pairs[j][1] for j in idx], padding=True,
                                 truncation=True, max_length=self.max_seq_length, return_tensors="np")  # fmt: skip
            logits = self.session.run(None, {k: enc[k].astype(np.int64) for k in self.inputs})[0][:, 0]
            out[idx] = 1.0 / (1.0 + np.exp(-logits))
        return out


class OnnxRerankerModel(PythonModel):  # type: ignore[misc]
    """The int8 reranker's MLflow pyfunc: `[{"query": ..., "passage": ...}, ...]` -> one relevance score per pair,
    as the float reranker's (core/retrieval_unit.py `RerankerModel`)."""

    def load_context(self, context: Any) -> None:
        self.model = OnnxReranker(Path(context.artifacts["reranker_int8"]))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "model"}  # an ONNX Runtime session cannot be pickled

    def predict(
        self, context: Any, model_input: list[dict[str, str]], params: dict[str, Any] | None = None
    ) -> list[float]:
        pairs = [(str(row["query"]), str(row["passage"])) for row in model_input]
        return [float(s) for s in self.model.predict(pairs)] if pairs else []
