"""Stage `register`: log each fine-tuned model to MLflow with its flavour, register it, and move the
`champion` alias to it only if the promotion gate passes.

The model is logged into the run that trained it, with a signature, an input example, lineage tags
(git commit, data md5s) and dataset lineage records for the datasets it was trained and scored on
(`core.tracking`); registering, tagging and moving the alias go through `core.registry`. The decision
and its reasons go to `artifacts/reports/register.json` and onto the model version. Last, the
retrieval configuration over the champion embedder is chosen and registered (evaluation/register_retrieval.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from core import paths
from core.config import Params, params
from core.io import write_json
from core.loading import load_chat, load_embedder
from core.log import get_logger
from core.registry import Registry
from core.tracking import (
    lineage_tags,
    log_chat_model,
    log_datasets,
    log_embedder_model,
    resume_run,
    setup_mlflow,
)
from evaluation.chat_quality import heldout_loss
from evaluation.gate import Decision, decide
from evaluation.register_retrieval import RetrievalRegisterError, register_retrieval, versus_naive
from evaluation.register_variants import pins, register_chat_int8, register_embedder_int8
from evaluation.retrieval import QuestionSet

log = get_logger(__name__)


@dataclass
class Registered:
    name: str
    version: str
    model_uri: str


def register_embedder(
    p: Params, registry: Registry, run_id: str, tags: dict[str, str], base: bool = False
) -> Registered:
    """Log the fine-tuned embedder (or, with `base`, the base one) into its training run and register it."""
    model = load_embedder(paths.BASE_EMBEDDER if base else paths.EMBEDDER_MODEL, device="cpu")
    with resume_run(run_id):
        uri = log_embedder_model(
            model,
            "embedder_base" if base else "embedder",
            example=["json: dumps", "How do I read a file line by line?"],
            pip_requirements=pins("sentence-transformers", "transformers", "torch"),
        )
        log_datasets(
            {
                "embed_train": (paths.EMBED_TRAIN, "training"),
                "eval_questions": (paths.EVAL_QUESTIONS, "evaluation"),
            }
        )
    return Registered(p.models.embedder_name, registry.register(uri, p.models.embedder_name, tags), uri)


def register_chat(p: Params, registry: Registry, run_id: str, tags: dict[str, str], base: bool = False) -> Registered:
    """Log the fine-tuned chat model (or, with `base`, the base one) into its training run and register it."""
    model, tok = load_chat(paths.BASE_CHAT if base else paths.CHAT_MODEL, device="cpu")
    tok.padding_side = "right"  # restore the saved default; serving sets what it needs
    with resume_run(run_id):
        uri = log_chat_model(
            model,
            tok,
            "chat_base" if base else "chat",
            example={"messages": [{"role": "user", "content": "What does json.dumps do?"}]},
            pip_requirements=pins("transformers", "torch", "accelerate"),
        )
        log_datasets({"chat_train": (paths.CHAT_TRAIN, "training"), "chat_eval": (paths.CHAT_EVAL, "evaluation")})
    return Registered(p.models.chat_name, registry.register(uri, p.models.chat_name, tags), uri)


def champion_score_embedder(p: Params, uri: str) -> float:
    """The current champion on the same held-out questions and chunking as the candidate."""
    return QuestionSet.load(p).score(load_embedder(uri), p)[p.gate.embedder_metric]


def champion_score_chat(p: Params, uri: str) -> float:
    model, tok = load_chat(uri)
    df = pl.read_parquet(paths.CHAT_EVAL).head(p.evaluate.chat_loss_samples)
    return heldout_loss(model, tok, df, p.train_chat.max_length)["eval_loss"]


def promote(registry: Registry, reg: Registered, decision: Decision, alias: str) -> str | None:
    """Record the decision on the version; move the alias only when the gate passed.

    Returns:
        The version the alias points at afterwards (None when there is still no champion).
    """
    registry.tag(
        reg.name,
        reg.version,
        {"gate.decision": "promoted" if decision.promote else "rejected", "gate.reasons": " | ".join(decision.reasons)},
    )
    if decision.promote:
        registry.promote(reg.name, alias, reg.version)
        log.info("promoted model=%s version=%s alias=%s", reg.name, reg.version, alias)
    else:
        log.warning("not promoted model=%s version=%s reasons=%s", reg.name, reg.version, decision.reasons)
    return registry.find(reg.name, alias)


@dataclass(frozen=True)
class Candidate:
    """What differs between the two models: how to register and score them, and which way is better."""

    kind: str  # key in evaluate.json and the report
    registered_name: str
    metric: str
    higher_is_better: bool
    min_gain: float
    train_metrics: Path
    register: Callable[..., Registered]
    """(params, registry, run_id, tags, base=False) -> the registered version."""
    champion_score: Callable[[Params, str], float]


def gate_one(
    p: Params, registry: Registry, c: Candidate, scores: dict[str, dict[str, float]], tags: dict[str, str]
) -> dict[str, Any]:
    """Register one fine-tuned model, score the current champion on the same held-out set, apply the gate.

    Returns:
        The gate's decision (`Decision.to_dict()`) with the new version and the champion before and after.
    """
    alias = p.models.champion_alias
    old = registry.find(c.registered_name, alias)
    old_score = c.champion_score(p, f"models:/{c.registered_name}/{old}") if old else None
    run_id = json.loads(c.train_metrics.read_text())["run_id"]
    heldout = {f"heldout.{k.replace('@', '_at_')}": str(v) for k, v in scores["finetuned"].items()}
    reg = c.register(p, registry, run_id, tags | heldout)
    d = decide(
        c.metric,
        scores["finetuned"][c.metric],
        scores["base"][c.metric],
        old_score,
        higher_is_better=c.higher_is_better,
        min_gain=c.min_gain,
        champion_tolerance=p.gate.champion_tolerance,
    )
    champion = promote(registry, reg, d, alias)
    fallback = None
    if d.promote_base:  # refused, with nothing served yet: the base model (no worse on this set) serves
        base_scores = {f"heldout.{k.replace('@', '_at_')}": str(v) for k, v in scores["base"].items()}
        base_reg = c.register(p, registry, run_id, tags | base_scores | {"variant": "base"}, base=True)
        registry.tag(c.registered_name, base_reg.version, {"gate.decision": "promoted", "gate.reasons": d.reasons[-1]})
        registry.promote(c.registered_name, alias, base_reg.version)
        log.warning("promoted the base model=%s version=%s alias=%s", c.registered_name, base_reg.version, alias)
        champion = fallback = base_reg.version
    return {
        **d.to_dict(),
        "version": reg.version,
        "base_version": fallback,
        "previous_champion_version": old,
        "champion_version": champion,
    }


def base_embedder_version(p: Params, registry: Registry, report: dict[str, Any], tags: dict[str, str]) -> str:
    """The registered base embedder for a retrieval unit that searches with it: the one the gate promoted (no
    champion before), else registered now beside the candidate, without moving any alias."""
    if report["embedder"]["base_version"] is not None:
        return str(report["embedder"]["base_version"])
    run_id = json.loads(paths.TRAIN_EMBEDDER_METRICS.read_text())["run_id"]
    scores = json.loads(paths.EVAL_METRICS.read_text())["embedder"]["base"]
    heldout = {f"heldout.{k.replace('@', '_at_')}": str(v) for k, v in scores.items()}
    reg = register_embedder(p, registry, run_id, tags | heldout | {"variant": "base"}, base=True)
    registry.tag(
        reg.name,
        reg.version,
        {"gate.decision": "not promoted", "gate.reasons": "the base model: the retrieval unit searches with it"},
    )
    return reg.version


def main() -> None:
    p = params()
    setup_mlflow()
    registry = Registry()
    metrics = json.loads(paths.EVAL_METRICS.read_text())
    tags = lineage_tags({"chunks": paths.CHUNKS, "embed_train": paths.EMBED_TRAIN, "chat_train": paths.CHAT_TRAIN})
    candidates = [
        Candidate(
            "embedder",
            p.models.embedder_name,
            p.gate.embedder_metric,
            True,
            p.gate.embedder_min_gain,
            paths.TRAIN_EMBEDDER_METRICS,
            register_embedder,
            champion_score_embedder,
        ),
        Candidate(
            "chat",
            p.models.chat_name,
            p.gate.chat_metric,
            False,
            p.gate.chat_min_gain,
            paths.TRAIN_CHAT_METRICS,
            register_chat,
            champion_score_chat,
        ),
    ]
    report: dict[str, Any] = {c.kind: gate_one(p, registry, c, metrics[c.kind], tags) for c in candidates}
    report["chat_int8"] = register_chat_int8(p, registry, report["chat"], tags)
    report["embedder_int8"] = register_embedder_int8(p, registry, report["embedder"], tags)
    try:
        report["retrieval"] = register_retrieval(
            p,
            registry,
            metrics,
            report["embedder"],
            tags,
            lambda: base_embedder_version(p, registry, report, tags),
            report["embedder_int8"],
        )
    except RetrievalRegisterError as e:
        write_json(report, paths.REGISTER_REPORT)
        sys.exit(f"register: {e}")
    dense = report["retrieval"]["scores"]["dense"]  # the champion embedder's, whichever version that is
    report["embedder"]["versus_naive"] = versus_naive(p.gate.embedder_metric, dense, metrics["naive"], "dense search")
    write_json(report, paths.REGISTER_REPORT)
    for name, r in report.items():
        if name in ("chat_int8", "embedder_int8"):
            verdict = f"version {r['version']} registered" if r["version"] else "not registered"
            print(f"{name} (of {r['source']}): {verdict}; {p.models.champion_alias} is v{r['champion_version']}")
            print(f"  - {r['reason']}")
            continue
        if name == "retrieval":
            int8 = f", int8 form v{r['embedder_int8_version']}" if r["embedder_int8_version"] else ""
            served = f"mode {r['mode']}, embedder v{r['embedder_version']}{int8}"
            print(f"retrieval: version {r['version']} PROMOTED ({served})")
            for reason in [*r["reasons"], r["versus_naive"]["summary"]]:
                print(f"  - {reason}")
            q = r["reranker"]["int8"]
            verdict = f"version {q['version']} registered" if q["version"] else "not registered"
            print(f"reranker_int8 (of {q['source']}): {verdict}; {p.models.champion_alias} is v{q['champion_version']}")
            print(f"  - {q['reason']}")
            continue
        verdict = "PROMOTED" if r["promote"] else "not promoted"
        if r["base_version"] is not None:
            verdict += f" (base model registered as version {r['base_version']} and promoted)"
        print(f"{name}: version {r['version']} {verdict}; {p.models.champion_alias} is v{r['champion_version']}")
        for reason in r["reasons"]:
            print(f"  - {reason}")
        if "versus_naive" in r:
            print(f"  - {r['versus_naive']['summary']}")


if __name__ == "__main__":
    main()
