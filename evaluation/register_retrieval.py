"""The register stage's last step: choose the retrieval mode by measurement and register the unit.

The `retrieval` candidate is built on the embedder the gate left as champion: of the modes in params
`retrieval.modes`, the one scoring best on the held-out questions (gate metric; ties go to the one
listed first) becomes the default, and the unit (config + lexical index, core/retrieval_unit.py) is
registered and promoted. Dense search with the champion embedder is always among the modes, so the
promoted unit is never worse than dense search with the gated embedder; how it compares with the naive
recipe is reported (`versus_naive`). The fine-tuned reranker is registered too, and promoted (and named
by the unit, which then serves hybrid + reranker) only when reranking the hybrid candidates beats the
best mode without it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from core import paths
from core.config import Params
from core.loading import load_embedder
from core.log import get_logger
from core.registry import Registry
from core.retrieval_unit import RetrievalConfig, write_unit
from core.tracking import file_md5, log_reranker_model, log_retrieval_model, resume_run
from evaluation.retrieval import QuestionSet

log = get_logger(__name__)


class RetrievalRegisterError(RuntimeError):
    pass


def choose_mode(scores: dict[str, dict[str, float]], metric: str, modes: Sequence[str]) -> tuple[str, list[str]]:
    """The mode with the best `metric` (higher is better); on a tie, the one earliest in `modes`.

    Returns:
        The mode and one reason line per mode, best first.
    """
    if not modes:
        raise ValueError("no retrieval modes to choose from")
    ranked = sorted(modes, key=lambda m: (-scores[m][metric], list(modes).index(m)))
    best = ranked[0]
    reasons = [
        f"{m}: {metric} {scores[m][metric]:.4f}"
        + (" -> chosen" if m == best else f" ({scores[m][metric] - scores[best][metric]:+.4f})")
        for m in ranked
    ]
    return best, reasons


def versus_naive(metric: str, served: dict[str, float], naive: dict[str, float], what: str) -> dict[str, Any]:
    """By how much `served` won or lost against the naive recipe, per metric."""
    gains = {k: round(served[k] - naive[k], 4) for k in naive if k in served}
    verdict = "beats" if gains[metric] > 0 else "does not beat"
    return {
        "gains": gains,
        "summary": f"{what} {metric} {served[metric]} {verdict} the naive recipe's {naive[metric]} "
        f"({gains[metric]:+.4f}) on the held-out questions",
    }


def mode_scores(p: Params, metrics: dict[str, Any], embedder: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each mode's held-out scores with the champion embedder: evaluate's rows when it is the candidate
    or the base model, else (an older champion kept) measured here on the same questions."""
    champion = embedder["champion_version"]
    if champion in (embedder["version"], embedder["base_version"]):
        row = "finetuned" if champion == embedder["version"] else "base"
        return {"dense": metrics["embedder"][row], "lexical": metrics["lexical"], "hybrid": metrics["hybrid"][row]}
    log.info("scoring retrieval modes with the kept champion embedder version %s", champion)
    return QuestionSet.load(p).score_modes(load_embedder(f"models:/{p.models.embedder_name}/{champion}"), p)


def register_retrieval(
    p: Params, registry: Registry, metrics: dict[str, Any], embedder: dict[str, Any], tags: dict[str, str]
) -> dict[str, Any]:
    """Register the retrieval unit over the champion embedder and promote it.

    Args:
        embedder: the embedder gate's report (`version`, `base_version`, `champion_version`).

    Raises:
        RetrievalRegisterError: no embedder champion, or the lexical index is not of the current chunks.
    """
    champion = embedder["champion_version"]
    if champion is None:
        raise RetrievalRegisterError("no embedder champion to build the retrieval configuration on")
    chunks_md5 = file_md5(paths.CHUNKS)
    lexical = json.loads((paths.LEXICAL_INDEX / "manifest.json").read_text())
    if lexical["chunks_md5"] != chunks_md5:
        raise RetrievalRegisterError(
            f"{paths.LEXICAL_INDEX} was built from other chunks (md5 {lexical['chunks_md5']}, now {chunks_md5}): "
            "run `dvc repro lexical`"
        )
    metric = p.gate.embedder_metric
    scores = mode_scores(p, metrics, embedder)
    mode, reasons = choose_mode(scores, metric, p.retrieval.modes)
    reranker = register_reranker(p, registry, metrics, embedder, scores[mode], mode, tags)
    reasons.append(reranker["reason"])
    served = scores[mode]
    if reranker["promote"]:
        mode, served = "hybrid", metrics["reranked"]
    naive = versus_naive(
        metric, served, metrics["naive"], f"{mode} search" + (" + reranker" if reranker["promote"] else "")
    )
    abstain_score, abstain_threshold, abstain_reason = abstention(
        metrics.get("abstention", {}), mode, reranker["promote"], measured=champion == embedder["version"]
    )
    reasons.append(abstain_reason)
    config = RetrievalConfig.of(
        p.retrieval,
        embedder_name=p.models.embedder_name,
        embedder_version=champion,
        chunks_md5=chunks_md5,
        chunking=p.data.chunk.model_dump(),
        mode=mode,
        metric=metric,
        scores={**scores, "reranked": metrics["reranked"], "naive": metrics["naive"]},
        reasons=[*reasons, naive["summary"]],
        reranker_name=p.models.reranker_name if reranker["promote"] else None,
        reranker_version=reranker["version"] if reranker["promote"] else None,
        abstain_score=abstain_score,
        abstain_threshold=abstain_threshold,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "retrieval"
        write_unit(folder, config, paths.LEXICAL_INDEX)
        uri = log_retrieval_model(
            folder,
            "register_retrieval",
            config.model_dump(
                include={
                    "embedder_name",
                    "embedder_version",
                    "chunking",
                    "mode",
                    "rrf_k",
                    "dense_weight",
                    "lexical_weight",
                    "candidates",
                    "stemmer",
                }
            ),
            tags,
            [f"{pkg}=={version(pkg)}" for pkg in ("bm25s", "PyStemmer", "mlflow")],
        )
    name, alias = p.models.retrieval_name, p.models.champion_alias
    new = registry.register(
        uri, name, tags | {"mode": mode, "embedder_version": champion, "reranker_version": str(config.reranker_version)}
    )
    registry.tag(name, new, {"gate.decision": "promoted", "gate.reasons": " | ".join(config.reasons)})
    registry.promote(name, alias, new)
    log.info("promoted model=%s version=%s alias=%s mode=%s embedder=%s", name, new, alias, mode, champion)
    return {
        "version": new,
        "champion_version": new,
        "embedder_version": champion,
        "mode": mode,
        "reranker": reranker,
        "metric": metric,
        "scores": scores,
        "reasons": reasons,
        "versus_naive": naive,
    }


def abstention(
    measured_thresholds: dict[str, dict[str, float]], mode: str, reranked: bool, measured: bool
) -> tuple[Literal["dense", "reranker"] | None, float | None, str]:
    """Which abstention threshold the unit carries: on the reranker's score when it reranks, else on dense cosine
    (dense and hybrid search both compute it); none for lexical search, or when evaluate measured the threshold with
    another embedder than the champion.

    Returns:
        The score kind, its threshold, and the reason for the report.
    """
    kind: Literal["dense", "reranker"] | None = (
        "reranker" if reranked else ("dense" if mode in ("dense", "hybrid") else None)
    )
    if kind is None:
        return None, None, "abstention: none (lexical scores have no fixed scale)"
    if kind == "dense" and not measured:
        return None, None, "abstention: none (its threshold was measured with the candidate embedder, not the champion)"
    found = measured_thresholds.get(kind)
    if not found:
        return None, None, f"abstention: none ({kind} threshold not measured)"
    return (
        kind,
        float(found["threshold"]),
        (
            f"abstention: below {kind} score {found['threshold']:.4f} (answers "
            f"{found['answered_when_answerable']:.0%} of answerable held-out questions, abstains on "
            f"{found['abstained_when_unanswerable']:.0%} with their document taken out)"
        ),
    )


def reranker_decision(
    metric: str, reranked: float | None, best: float, best_mode: str, min_gain: float
) -> tuple[bool, str]:
    """Whether reranking passes the gate: it must beat the best mode without it by more than `min_gain`.

    Args:
        reranked: the hybrid + reranker score with the champion embedder, None when not measured with it.
    """
    if reranked is None:
        return False, "reranker: not measured with the champion embedder (only with the candidate) -> not used"
    gain = reranked - best
    ok = gain > min_gain
    return ok, (
        f"hybrid + reranker: {metric} {reranked:.4f} vs {best_mode} {best:.4f} ({gain:+.4f}; needs > {min_gain}) -> "
        + ("pass" if ok else "FAIL, served without the reranker")
    )


def register_reranker(
    p: Params,
    registry: Registry,
    metrics: dict[str, Any],
    embedder: dict[str, Any],
    best: dict[str, float],
    best_mode: str,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log the fine-tuned cross-encoder into its training run, register it, and promote it when reranking the
    hybrid candidates beats the best mode without reranking (`gate.reranker_min_gain`)."""
    metric = p.gate.embedder_metric
    measured = embedder["champion_version"] == embedder["version"]  # evaluate reranked the candidate's hybrid list
    promote, reason = reranker_decision(
        metric, metrics["reranked"][metric] if measured else None, best[metric], best_mode, p.gate.reranker_min_gain
    )
    run_id = json.loads(paths.TRAIN_RERANKER_METRICS.read_text())["run_id"]
    with resume_run(run_id):
        uri = log_reranker_model(
            paths.RERANKER_MODEL,
            [f"{pkg}=={version(pkg)}" for pkg in ("sentence-transformers", "transformers", "torch")],
        )
    name = p.models.reranker_name
    heldout = {f"heldout.{k.replace('@', '_at_')}": str(v) for k, v in metrics["reranked"].items()}
    new = registry.register(uri, name, tags | heldout)
    registry.tag(name, new, {"gate.decision": "promoted" if promote else "rejected", "gate.reasons": reason})
    if promote:
        registry.promote(name, p.models.champion_alias, new)
        log.info("promoted model=%s version=%s alias=%s", name, new, p.models.champion_alias)
    else:
        log.warning("not promoted model=%s version=%s reason=%s", name, new, reason)
    return {
        "version": new,
        "promote": promote,
        "reason": reason,
        "champion_version": registry.find(name, p.models.champion_alias),
    }
