"""The register stage's last step: choose what search serves, by measurement, and register it as one unit.

Three kinds of candidate, each scored on the held-out questions (gate metric):
1. the champion embedder (whichever the embedder gate left) in the best of `retrieval.modes` (ties: the mode
   listed first), and the fine-tuned candidate in its best mode when the gate kept an older champion (the gate
   judges dense search; with fusion the candidate can still be the better one); the fine-tuned embedder with
   the fine-tuned reranker (hybrid) instead, when reranking passes its gate (`register_reranker`);
2. the base embedder in its best mode (when the champion is not the base model): the embedder gate judges
   dense search alone, and fusion can favour the model that lost it (MLflow's docs: hybrid with the base
   embedder scored 0.7788 MRR@10 against 0.7604 with the fine-tuned one);
3. the naive recipe: the base embedder over fixed 1,000-character windows of every document, dense.
The best of 1 and 2 (ties: 1) is served only if it beats the naive recipe by more than `gate.retrieval_min_gain`;
otherwise the naive recipe is served, so a corpus where nothing we build helps still gets what a person would
have written by hand. The unit (config, chunks and lexical index; core/retrieval_unit.py) is registered and
promoted; the index stage builds the vector collection from it, and the server loads the embedder version it
names. The register report says by how much each candidate won or lost (`versus_naive`, `reasons`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from core import paths
from core.chunking import chosen_chunking
from core.config import ChunkParams, Params
from core.io import write_parquet
from core.lexical import LexicalIndex
from core.loading import load_embedder
from core.log import get_logger
from core.registry import Registry
from core.retrieval_params import Mode
from core.retrieval_unit import RetrievalConfig, write_unit
from core.tracking import file_md5, log_reranker_model, log_retrieval_model, resume_run
from data.chunk import chunk_documents, load_tokenizer
from evaluation.register_variants import pins, register_reranker_int8
from evaluation.retrieval import QuestionSet

log = get_logger(__name__)


class RetrievalRegisterError(RuntimeError):
    pass


def choose_mode(scores: dict[str, dict[str, float]], metric: str, modes: Sequence[Mode]) -> tuple[Mode, list[str]]:
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


@dataclass(frozen=True)
class Candidate:
    """One way to serve search, with its held-out scores: over the champion embedder, the base embedder, or the
    naive recipe (base embedder, fixed character windows of every document, dense)."""

    embedder: Literal["champion", "candidate", "base", "naive"]
    mode: Mode
    scores: dict[str, float]
    reranked: bool = False

    def label(self, champion: str) -> str:
        if self.embedder == "naive":
            return "the naive recipe (base embedder, fixed character windows, dense)"
        who = {"champion": f"embedder v{champion}", "candidate": "the fine-tuned candidate embedder"}.get(
            self.embedder, "the base embedder"
        )
        return f"{self.mode} search with {who}" + (" + reranker" if self.reranked else "")


def choose_candidate(
    candidates: Sequence[Candidate], naive: dict[str, float], metric: str, min_gain: float, champion: str
) -> tuple[Candidate, list[str]]:
    """The best candidate by `metric` (ties: the first), unless it does not beat the naive recipe by more than
    `min_gain`: then the naive recipe, so that a corpus where nothing we build helps is served the recipe a person
    would have written by hand.

    Returns:
        The chosen candidate and one reason line per candidate, then the verdict.
    """
    top = max(candidates, key=lambda c: c.scores[metric])  # max keeps the first of equals
    reasons = [f"{c.label(champion)}: {metric} {c.scores[metric]:.4f}" for c in candidates]
    gain = top.scores[metric] - naive[metric]
    if gain > min_gain:
        return top, [*reasons, f"{top.label(champion)} beats the naive recipe's {naive[metric]:.4f} by {gain:+.4f} "
                     f"(needs > {min_gain}) -> served"]  # fmt: skip
    fallback = Candidate("naive", "dense", naive)
    return fallback, [
        *reasons,
        f"nothing beats the naive recipe's {metric} {naive[metric]:.4f} by more than {min_gain} (best: "
        f"{top.label(champion)}, {gain:+.4f}) -> the naive recipe is served",
    ]


@dataclass(frozen=True)
class Served:
    """What the chosen candidate is built from: the embedder version, the chunking, and the two indexes' inputs."""

    embedder_version: str
    chunking: ChunkParams
    chunks_file: Path
    lexical_dir: Path


def naive_unit_inputs(p: Params, folder: Path) -> tuple[ChunkParams, Path, Path]:
    """The naive recipe's chunking of every document, written to `folder` with its BM25 index (so the unit can
    still answer `mode: lexical` and `hybrid` requests)."""
    naive = p.data.chunk.model_copy(
        update={"method": "chars", "chunk_chars": p.evaluate.naive_chunk_chars,
                "overlap_chars": p.evaluate.naive_overlap_chars}
    )  # fmt: skip
    chunks = chunk_documents(pl.read_parquet(paths.DOCUMENTS), load_tokenizer(), naive)
    chunks_file, lexical_dir = folder / "chunks.parquet", folder / "lexical"
    write_parquet(chunks, chunks_file)
    LexicalIndex.build(chunks["chunk_id"].to_list(), chunks["text"].to_list(), p.retrieval.stemmer).save(lexical_dir)
    log.info("naive recipe: %d chunks of %s", chunks.height, naive.name)
    return naive, chunks_file, lexical_dir


def register_retrieval(
    p: Params,
    registry: Registry,
    metrics: dict[str, Any],
    embedder: dict[str, Any],
    tags: dict[str, str],
    register_base: Callable[[], str],
    int8: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Choose what search serves (see the module docstring), register it as one unit and promote it.

    Args:
        embedder: the embedder gate's report (`version`, `base_version`, `champion_version`).
        register_base: registers the base embedder (not promoted) and returns its version; called only when the
            chosen candidate searches with it.
        int8: the int8 embedder's registration (`evaluation.register_variants.register_embedder_int8`); the unit names
            it when it searches with the float version it was made from.

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
    tuned = fine_tuned_scores(metrics)
    tuned_mode, _ = choose_mode(tuned, metric, p.retrieval.modes)
    reranker = register_reranker(p, registry, metrics, tuned[tuned_mode], tuned_mode, tags)
    reranker["int8"] = register_reranker_int8(p, registry, reranker, tags)
    reasons.append(reranker["reason"])

    def fine_tuned(kind: Literal["champion", "candidate"]) -> Candidate:
        if reranker["promote"]:
            return Candidate(kind, "hybrid", metrics["reranked"], reranked=True)
        return Candidate(kind, tuned_mode, tuned[tuned_mode])

    # The embedder gate judges dense search against the champion; an older champion it kept can still lose to the
    # candidate once fusion is in: both are measured here.
    if champion == embedder["version"]:
        candidates = [fine_tuned("champion")]
    else:
        candidates = [Candidate("champion", mode, scores[mode]), fine_tuned("candidate")]
    if champion != embedder["base_version"]:  # evaluate's base rows: the same questions and chunks, the base model
        base = {"dense": metrics["embedder"]["base"], "lexical": metrics["lexical"]}
        base["hybrid"] = metrics["hybrid"]["base"]
        base_mode, _ = choose_mode(base, metric, p.retrieval.modes)
        candidates.append(Candidate("base", base_mode, base[base_mode]))
    chosen, verdict = choose_candidate(candidates, metrics["naive"], metric, p.gate.retrieval_min_gain, champion)
    reasons += verdict
    naive = versus_naive(metric, chosen.scores, metrics["naive"], chosen.label(champion))
    abstain_score, abstain_threshold, abstain_reason = abstention(
        metrics.get("abstention", {}),
        chosen.mode,
        chosen.reranked,
        measured=chosen.embedder == "candidate" or (chosen.embedder == "champion" and champion == embedder["version"]),
    )
    reasons.append(abstain_reason)
    with tempfile.TemporaryDirectory() as tmp:
        if chosen.embedder == "naive":
            served = Served(register_base(), *naive_unit_inputs(p, Path(tmp) / "naive"))
        else:
            emb_version = {"champion": champion, "candidate": embedder["version"]}.get(
                chosen.embedder
            ) or register_base()
            served = Served(emb_version, chosen_chunking(p), paths.CHUNKS, paths.LEXICAL_INDEX)
        int8_version = int8["version"] if int8 and int8["source_version"] == served.embedder_version else None
        config = RetrievalConfig.of(
            p.retrieval,
            embedder_name=p.models.embedder_name,
            embedder_version=served.embedder_version,
            embedder_int8_name=p.models.embedder_int8_name if int8_version else None,
            embedder_int8_version=int8_version,
            chunks_md5=file_md5(served.chunks_file),
            chunking=served.chunking.model_dump(),
            mode=chosen.mode,
            metric=metric,
            scores={**scores, "served": chosen.scores, "reranked": metrics["reranked"], "naive": metrics["naive"]},
            reasons=[*reasons, naive["summary"]],
            reranker_name=p.models.reranker_name if chosen.reranked else None,
            reranker_version=reranker["version"] if chosen.reranked else None,
            reranker_int8_name=p.models.reranker_int8_name if chosen.reranked and reranker["int8"]["version"] else None,
            reranker_int8_version=reranker["int8"]["version"] if chosen.reranked else None,
            abstain_score=abstain_score,
            abstain_threshold=abstain_threshold,
        )
        folder = Path(tmp) / "retrieval"
        write_unit(folder, config, served.lexical_dir, served.chunks_file)
        uri = log_retrieval_model(
            folder,
            "register_retrieval",
            config.model_dump(include=_LOGGED_PARAMS),
            tags,
            pins("bm25s", "PyStemmer", "mlflow"),
        )
    name, alias = p.models.retrieval_name, p.models.champion_alias
    new = registry.register(
        uri,
        name,
        tags
        | {"mode": chosen.mode, "embedder_version": served.embedder_version, "served": chosen.embedder,
           "embedder_int8_version": str(int8_version),
           "reranker_version": str(config.reranker_version),
           "reranker_int8_version": str(config.reranker_int8_version)},
    )  # fmt: skip
    registry.tag(name, new, {"gate.decision": "promoted", "gate.reasons": " | ".join(config.reasons)})
    registry.promote(name, alias, new)
    log.info(
        "promoted model=%s version=%s alias=%s served=%s mode=%s embedder=%s chunking=%s",
        name, new, alias, chosen.embedder, chosen.mode, served.embedder_version, served.chunking.name,
    )  # fmt: skip
    return {
        "version": new,
        "champion_version": new,
        "served": chosen.embedder,
        "embedder_version": served.embedder_version,
        "embedder_int8_version": int8_version,
        "chunking": served.chunking.name,
        "mode": chosen.mode,
        "reranker": reranker,
        "metric": metric,
        "scores": scores,
        "served_scores": chosen.scores,
        "reasons": reasons,
        "versus_naive": naive,
    }


_LOGGED_PARAMS = {
    "embedder_name", "embedder_version", "chunking", "mode", "rrf_k", "dense_weight", "lexical_weight",
    "candidates", "stemmer",
}  # fmt: skip


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
        return None, None, "abstention: none (its threshold was measured on the fine-tuned candidate's scores)"
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


def fine_tuned_scores(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each mode's held-out scores with the candidate embedder: evaluate's fine-tuned rows (its reranking of their
    hybrid list is the reranker's)."""
    return {"dense": metrics["embedder"]["finetuned"], "lexical": metrics["lexical"],
            "hybrid": metrics["hybrid"]["finetuned"]}  # fmt: skip


def reranker_passes(p: Params, metrics: dict[str, Any]) -> tuple[bool, str]:
    """The reranker's own gate on evaluate's figures (`reranker_decision` against the candidate's best mode)."""
    metric = p.gate.embedder_metric
    tuned = fine_tuned_scores(metrics)
    mode, _ = choose_mode(tuned, metric, p.retrieval.modes)
    return reranker_decision(metric, metrics["reranked"][metric], tuned[mode][metric], mode, p.gate.reranker_min_gain)


def reranker_decision(metric: str, reranked: float, best: float, best_mode: str, min_gain: float) -> tuple[bool, str]:
    """Whether reranking passes the gate: it must beat the best mode without it by more than `min_gain`."""
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
    best: dict[str, float],
    best_mode: str,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log the fine-tuned cross-encoder into its training run, register it, and promote it when reranking the
    fine-tuned candidate embedder's hybrid list (what evaluate measured) beats that embedder's best mode without
    reranking (`gate.reranker_min_gain`)."""
    metric = p.gate.embedder_metric
    promote, reason = reranker_decision(
        metric, metrics["reranked"][metric], best[metric], best_mode, p.gate.reranker_min_gain
    )
    run_id = json.loads(paths.TRAIN_RERANKER_METRICS.read_text())["run_id"]
    with resume_run(run_id):
        uri = log_reranker_model(
            paths.RERANKER_MODEL,
            pins("sentence-transformers", "transformers", "torch"),
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
