"""Stage `quantize_reranker`: the int8 ONNX form of the fine-tuned reranker, measured against it.

    quantize   its classifier exported to ONNX with int8 weights per output channel and dynamic int8 activations
               (core/onnx_reranker.py `quantize`; why this form: its docstring), saved to artifacts/models/reranker_int8
               and reloaded from there for everything below
    measure    the held-out questions' hybrid rankings (the fine-tuned embedder's, as stage `evaluate` ranks them)
               with their first `retrieval.rerank_candidates` rescored by it, against evaluate's `reranked` figures for
               the float reranker; each rescored pair's score against the float one's on a sample; and milliseconds
               per question of both, one question at a time at `serving.rerank_batch_size` as the server scores them
               (reported, never gated: it depends on the machine)
    gate       passed when its reranked `gate.embedder_metric` is below the float reranker's by less than
               `gate.reranker_int8_max_drop`

When the float reranker fails its own gate (`gate.reranker_min_gain`, on evaluate's figures: the default corpus's
does), search is served without reranking and no int8 form of it would be served either: the stage then writes the
int8 folder (seconds; `make bench` times it) but neither measures nor gates it (2:30 of the default run), and says so.

Stage `register` registers it under `models.reranker_int8_name` only when the gate passed, gives it the float
version's alias when the float version gets it, and the retrieval unit names it when the unit reranks with that float
version (`serving.reranker_variant: int8` serves it).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from core import paths
from core.config import Params, params
from core.io import write_json
from core.loading import load_embedder, load_reranker
from core.log import get_logger
from core.onnx_embedder import METHOD
from core.onnx_reranker import OnnxReranker, quantize
from evaluation.register_retrieval import reranker_passes
from evaluation.retrieval import QuestionSet
from training.common import seed_everything, swap_dir
from training.quantize_embedder import drop_gate

log = get_logger(__name__)

TIMED_QUESTIONS = 24
"""Questions timed one at a time per form (the server's per-request cost; 2 x 24 x ~0.3 s here)."""


def gate(p: Params, float_score: float, int8_score: float) -> tuple[bool, str]:
    limit = p.gate.reranker_int8_max_drop
    return drop_gate(f"reranked {p.gate.embedder_metric}", float_score, int8_score, limit, "reranker")


def per_question_ms(model: Any, pairs: list[list[tuple[str, str]]], batch_size: int) -> dict[str, float]:
    """p50 and max milliseconds to score one question's candidates, one question after another (after a warm-up)."""
    model.predict(pairs[0], batch_size=batch_size, show_progress_bar=False)
    ms = []
    for one in pairs:
        start = time.perf_counter()
        model.predict(one, batch_size=batch_size, show_progress_bar=False)
        ms.append((time.perf_counter() - start) * 1000)
    return {"p50": round(statistics.median(ms), 1), "max": round(max(ms), 1)}


def skipped(p: Params, why: str) -> dict[str, Any]:
    """The metrics of a stage that did not measure: the gate refuses, saying why."""
    reason = f"not measured: the float reranker is not served ({why})"
    gate = {"passed": False, "reason": reason, "max_drop": p.gate.reranker_int8_max_drop}
    report = {"method": METHOD, "source": "artifacts/models/reranker", "metric": p.gate.embedder_metric,
              "skipped": why, "gate": gate}  # fmt: skip
    write_json(report, paths.QUANTIZE_RERANKER_METRICS)
    return report


def run(p: Params) -> dict[str, Any]:
    seed_everything(p.seed)
    evaluated = json.loads(paths.EVAL_METRICS.read_text())
    tmp = paths.RERANKER_INT8_MODEL.with_name(paths.RERANKER_INT8_MODEL.name + ".tmp")
    started = time.perf_counter()
    quantize(paths.RERANKER_MODEL, tmp)
    swap_dir(tmp, paths.RERANKER_INT8_MODEL)
    log.info("quantized the reranker in %.1fs method=%s", time.perf_counter() - started, METHOD)

    served, why = reranker_passes(p, evaluated)
    if not served:
        log.warning("int8 reranker not measured: the float reranker fails its own gate: %s", why)
        return skipped(p, why)
    qs = QuestionSet.load(p)
    hybrid = qs.scored_rankings(load_embedder(paths.EMBEDDER_MODEL, device="cpu"), p)[0]["hybrid"]
    int8 = OnnxReranker(paths.RERANKER_INT8_MODEL, threads=torch.get_num_threads())
    reranked_rankings, _, _ = qs.rerank(int8, hybrid, p)  # type: ignore[arg-type]  # predict() as CrossEncoder's
    reranked = qs.metrics(reranked_rankings, p)

    reference = load_reranker(paths.RERANKER_MODEL, device="cpu")
    top, texts = p.retrieval.rerank_candidates, qs.chunks["text"].to_list()
    asked = qs.questions["query"].to_list()[:TIMED_QUESTIONS]
    pairs = [[(q, texts[j]) for j in ranking[:top]] for q, ranking in zip(asked, hybrid, strict=False)]
    flat = [pair for one in pairs for pair in one]
    diff = np.abs(np.asarray(reference.predict(flat, show_progress_bar=False)) - int8.predict(flat))
    batch = p.serving.rerank_batch_size
    latency: dict[str, Any] = {"float": per_question_ms(reference, pairs, batch),
                               "int8": per_question_ms(int8, pairs, batch), "questions": len(pairs),
                               "candidates": top, "batch_size": batch, "threads": torch.get_num_threads()}  # fmt: skip
    metric = p.gate.embedder_metric
    passed, reason = gate(p, evaluated["reranked"][metric], reranked[metric])
    report: dict[str, Any] = {
        "method": METHOD,
        "source": "artifacts/models/reranker",
        "metric": metric,
        "float": {"reranked": evaluated["reranked"]},
        "int8": {"reranked": reranked},
        "score_difference": {
            "mean": round(float(diff.mean()), 4),
            "max": round(float(diff.max()), 4),
            "pairs": len(flat),
        },
        "ms_per_question": latency,
        "gate": {"passed": passed, "reason": reason, "max_drop": p.gate.reranker_int8_max_drop},
    }
    write_json(report, paths.QUANTIZE_RERANKER_METRICS)
    log.info(
        "int8 reranker reranked %s=%s (float %s) score diff mean=%s ms/question int8=%s float=%s gate=%s",
        metric, reranked[metric], evaluated["reranked"][metric], report["score_difference"]["mean"],
        latency["int8"]["p50"], latency["float"]["p50"], "passed" if passed else "refused",
    )  # fmt: skip
    return report


def main() -> None:
    report = run(params())
    g = report["gate"]
    print(f"quantize_reranker: gate {'PASSED' if g['passed'] else 'refused'}: {g['reason']}")


if __name__ == "__main__":
    main()
