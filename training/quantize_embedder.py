"""Stage `quantize_embedder`: the int8 ONNX form of the fine-tuned embedder candidate, measured against it.

    quantize   its transformer exported to ONNX with int8 weights per output channel and dynamic int8 activations
               (core/onnx_embedder.py `quantize`; why this form: benchmarks/embedder_variants.py), saved to
               artifacts/models/embedder_int8 and reloaded from there for everything below
    measure    the held-out questions in dense and hybrid search (stage `evaluate`'s `QuestionSet`, whose float
               figures it reuses), and over the first `SAMPLE_CHUNKS` held-out chunks each one's cosine between its
               int8 and float vectors and chunks/s of both at the index's batch size (reported, never gated: the rate
               depends on the machine)
    gate       passed when its dense `gate.embedder_metric` is below the float model's by less than
               `gate.embedder_int8_max_drop`

Stage `register` registers it under `models.embedder_int8_name` only when the gate passed, gives it the float
version's alias when the float version gets it, and the retrieval unit names it when the unit searches with that
float version; stage `index` then embeds the chunks with it too when `index.variants` lists `int8`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch

from core import paths
from core.config import Params, params
from core.io import write_json
from core.loading import load_embedder
from core.log import get_logger
from core.onnx_embedder import METHOD, OnnxEmbedder, quantize
from evaluation.retrieval import QuestionSet
from training.common import seed_everything, swap_dir

log = get_logger(__name__)

SAMPLE_CHUNKS = 256
"""Chunks the cosine and the rates are measured on: two batches at the index's batch size. Over all 632 held-out
chunks (default corpus) they took 57 s of the stage's 124 s (float 17.3 chunks/s, int8 29.5, mean cosine 0.9911);
the gate reads the retrieval metrics, which still use every held-out chunk."""


def timed_encode(model: Any, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    """`texts`' unit vectors in one `encode` call (after a warm-up batch), and the texts encoded per second."""
    model.encode(texts[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    vectors = np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True))
    return vectors, round(len(texts) / (time.perf_counter() - start), 1)


def drop_gate(what: str, float_score: float, int8_score: float, limit: float, fallback: str) -> tuple[bool, str]:
    """An int8 form passes when its held-out score (`what`, e.g. `dense mrr@10`) is below the float model's by less
    than `limit`; the reason says by how much, and what to serve (`fallback`) when it does not pass."""
    change = round(int8_score - float_score, 4)
    said = f"held-out {what} {int8_score} is {change:+.4f} from the float model's {float_score}"
    if -change < limit:
        return True, f"{said} (drop < {limit})"
    return False, f"{said}, a drop not under {limit}: not registered (serve the float {fallback})"


def gate(p: Params, float_score: float, int8_score: float) -> tuple[bool, str]:
    limit = p.gate.embedder_int8_max_drop
    return drop_gate(f"dense {p.gate.embedder_metric}", float_score, int8_score, limit, "embedder")


def run(p: Params) -> dict[str, Any]:
    seed_everything(p.seed)
    evaluated = json.loads(paths.EVAL_METRICS.read_text())
    float_dense, float_hybrid = evaluated["embedder"]["finetuned"], evaluated["hybrid"]["finetuned"]
    tmp = paths.EMBEDDER_INT8_MODEL.with_name(paths.EMBEDDER_INT8_MODEL.name + ".tmp")
    started = time.perf_counter()
    quantize(paths.EMBEDDER_MODEL, tmp)
    swap_dir(tmp, paths.EMBEDDER_INT8_MODEL)
    log.info("quantized the embedder in %.1fs method=%s", time.perf_counter() - started, METHOD)

    int8 = OnnxEmbedder(paths.EMBEDDER_INT8_MODEL, threads=torch.get_num_threads())
    qs = QuestionSet.load(p)
    rankings, _ = qs.scored_rankings(int8, p)  # type: ignore[arg-type]  # encode() as sentence-transformers'
    dense, hybrid = qs.metrics(rankings["dense"], p), qs.metrics(rankings["hybrid"], p)
    reference = load_embedder(paths.EMBEDDER_MODEL, device="cpu")
    texts, batch = qs.chunks["text"].to_list()[:SAMPLE_CHUNKS], p.index.batch_size
    float_vectors, float_speed = timed_encode(reference, texts, batch)
    int8_vectors, int8_speed = timed_encode(int8, texts, batch)
    cosine = (float_vectors * int8_vectors).sum(1)
    speed = {"float": float_speed, "int8": int8_speed, "threads": torch.get_num_threads(), "batch_size": batch}
    metric = p.gate.embedder_metric
    passed, reason = gate(p, float_dense[metric], dense[metric])
    report: dict[str, Any] = {
        "method": METHOD,
        "source": "artifacts/models/embedder",
        "metric": metric,
        "float": {"dense": float_dense, "hybrid": float_hybrid},
        "int8": {"dense": dense, "hybrid": hybrid},
        "cosine_with_float": {
            "mean": round(float(cosine.mean()), 4),
            "min": round(float(cosine.min()), 4),
            "chunks": len(texts),
        },
        "chunks_per_s": speed,
        "gate": {"passed": passed, "reason": reason, "max_drop": p.gate.embedder_int8_max_drop},
    }
    write_json(report, paths.QUANTIZE_EMBEDDER_METRICS)
    log.info(
        "int8 embedder dense %s=%s (float %s) hybrid=%s (float %s) cosine=%s chunks/s=%s gate=%s",
        metric, dense[metric], float_dense[metric], hybrid[metric], float_hybrid[metric],
        report["cosine_with_float"]["mean"], speed, "passed" if passed else "refused",
    )  # fmt: skip
    return report


def main() -> None:
    report = run(params())
    g = report["gate"]
    print(f"quantize_embedder: gate {'PASSED' if g['passed'] else 'refused'}: {g['reason']}")


if __name__ == "__main__":
    main()
