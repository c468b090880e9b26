"""Which int8 embedder to make: speed and held-out retrieval of the fine-tuned MiniLM in fp32 and in int8 forms, in
process, on the default corpus's outputs.

    .venv/bin/python -m benchmarks.embedder_variants

Variants: sentence-transformers in fp32 (what is served today); PyTorch dynamic int8 on every Linear (the chat
variant's kernels, `core/quantize.py`, no new dependency); ONNX Runtime fp32 and int8 (`quantize_dynamic`), when the
`onnx` package is importable (the exporter needs it). Speed: chunk-sized texts per second at the index's batch size,
and one short query's milliseconds (what a search pays). Quality: the held-out questions' dense retrieval (the
evaluate stage's `QuestionSet` metrics) and each variant's mean cosine with the fp32 vectors.

Measured 2026-11-30 (2 threads, fine-tuned MiniLM, 512 chunks at batch 128, 224 held-out questions):

    variant                                  chunks/s  one query  cosine   dense MRR@10  hybrid MRR@10
    fp32 sentence-transformers (served)        25.9    13.2 ms    1.0      0.8261        0.8455
    int8 PyTorch dynamic, every Linear         42.4     7.2 ms    0.918    0.8151        0.8411
    fp32 ONNX Runtime                          26.2     3.9 ms    1.0      0.8261        0.8455
    int8 ONNX Runtime, per channel             51.1     3.4 ms    0.993    0.8405        0.8475

ONNX Runtime int8 is the one to make: twice fp32's batch throughput, a query in a quarter of the time (most of
sentence-transformers' 13 ms is Python around a 3 ms forward), vectors within 0.7% of fp32's, and held-out
retrieval no worse. PyTorch's dynamic int8 is slower and moves the vectors 8%.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


class OrtEmbedder:
    """An ONNX Runtime session behind `encode` with sentence-transformers' arguments: tokenise, run, mean-pool over the
    attention mask, normalise (the fine-tuned MiniLM's modules: Transformer, Pooling(mean), Normalize)."""

    def __init__(self, path: Path, tokenizer: Any, max_length: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, texts: list[str], batch_size: int = 32, **kwargs: Any) -> Any:
        order = np.argsort([-len(t) for t in texts])  # length-sorted batches, as sentence-transformers does
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")  # fmt: skip
            hidden = self.session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return torch.from_numpy(out) if kwargs.get("convert_to_tensor") else out


def export_onnx(model: Any, folder: Path) -> Path:
    """The transformer of a sentence-transformers model as ONNX (last hidden state; pooling stays outside)."""

    class Hidden(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    enc = model.tokenizer(["a short example text"], return_tensors="pt")
    path = folder / "model.onnx"
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        Hidden(model[0].auto_model.eval()), (enc["input_ids"], enc["attention_mask"]), str(path),
        input_names=["input_ids", "attention_mask"], output_names=["hidden"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes}, dynamo=False, opset_version=17,
    )  # fmt: skip
    return path


def speed(model: Any, chunks: list[str], queries: list[str], batch: int) -> dict[str, float]:
    model.encode(chunks[:batch], batch_size=batch)
    start = time.perf_counter()
    model.encode(chunks, batch_size=batch)
    per_s = len(chunks) / (time.perf_counter() - start)
    model.encode(queries[:1], batch_size=1)
    start = time.perf_counter()
    for q in queries:
        model.encode([q], batch_size=1)
    return {"chunks_per_s": round(per_s, 1), "query_ms": round((time.perf_counter() - start) / len(queries) * 1000, 2)}


def main() -> None:
    import polars as pl

    from core import paths
    from core.config import params
    from core.loading import load_embedder
    from evaluation.retrieval import QuestionSet

    p = params()
    fp32 = load_embedder(paths.EMBEDDER_MODEL, device="cpu")
    chunks = pl.read_parquet(paths.CHUNKS)["text"].head(512).to_list()
    qs = QuestionSet.load(p)
    queries = qs.questions["query"].head(64).to_list()
    reference = fp32.encode(chunks, batch_size=p.index.batch_size, normalize_embeddings=True)
    variants: dict[str, Any] = {"fp32 (sentence-transformers)": fp32}
    dynamic = copy.deepcopy(fp32)
    torch.ao.quantization.quantize_dynamic(dynamic, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    variants["int8 (PyTorch dynamic, every Linear)"] = dynamic
    with tempfile.TemporaryDirectory() as tmp:
        try:
            onnx_fp32 = export_onnx(fp32, Path(tmp))
            from onnxruntime.quantization import QuantType, quantize_dynamic

            onnx_int8 = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(str(onnx_fp32), str(onnx_int8), weight_type=QuantType.QInt8, per_channel=True)
            window = fp32.max_seq_length
            variants["fp32 (ONNX Runtime)"] = OrtEmbedder(onnx_fp32, fp32.tokenizer, window)
            variants["int8 (ONNX Runtime dynamic, per channel)"] = OrtEmbedder(onnx_int8, fp32.tokenizer, window)
        except (ImportError, ModuleNotFoundError) as e:  # torch's exporter needs the `onnx` package
            print(f"ONNX variants skipped: {e}")
        report: dict[str, Any] = {"threads": torch.get_num_threads(), "chunks": len(chunks)}
        for name, model in variants.items():
            vectors = np.asarray(model.encode(chunks, batch_size=p.index.batch_size, normalize_embeddings=True))
            rankings, _ = qs.scored_rankings(model, p)
            report[name] = {
                **speed(model, chunks, queries, p.index.batch_size),
                "cosine_with_fp32": round(float((vectors * reference).sum(1).mean()), 4),
                "dense": qs.metrics(rankings["dense"], p),
                "hybrid": qs.metrics(rankings["hybrid"], p),
            }
            print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
