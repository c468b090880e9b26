"""Stage `register`'s int8 variants: each is registered under its own name (`models.chat_int8_name`,
`models.embedder_int8_name`, `models.reranker_int8_name`) only when its own gate passed (stages `quantize_chat`,
`quantize_embedder`, `quantize_reranker`), with a
description saying what it is and how it measured, and tags naming the float version it was made from
(`quantized_from`). It takes the champion alias exactly when that float version did, so `<name>-int8@champion` is
always the int8 form of `<name>@champion` or of nothing newer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from core import paths
from core.config import Params
from core.log import get_logger
from core.registry import Registry
from core.tracking import log_int8_chat_model, log_int8_embedder_model, log_int8_reranker_model, resume_run

log = get_logger(__name__)


def pins(*packages: str) -> list[str]:
    """Explicit requirements: MLflow's inference adds torchvision for torch models, which fails here."""
    return [f"{p}=={version(p)}" for p in packages]


def chat_int8_card(q: dict[str, Any], source: str) -> str:
    """The int8 version's description: what it is, how it was made and measured (stage `quantize_chat`)."""
    f, i, speed = q["float"], q["int8"], q["tokens_per_s_one_stream"]
    return (
        f"int8 variant of {source} ({q['method']}: SmoothQuant alpha {q['alpha']} over {q['calibration_examples']} "
        f"training examples, then int8 weights per output channel with dynamic int8 activations; "
        f"{q['modules']} Linear modules quantised, kept in float: {', '.join(q['skip']) or 'none'}, "
        f"input rows each on their own scale in: {', '.join(q.get('per_token', [])) or 'none'}). "
        f"CPU only (PyTorch's dynamic int8 kernels); a GPU serves the float version. "
        f"Held-out loss {i['eval_loss']} (float {f['eval_loss']}), "
        f"answer F1 {i['answer_f1']} (float {f['answer_f1']}), "
        f"top-token agreement with the float model {q['top_token_agreement']}; one stream {speed['int8']} tokens/s "
        f"(float {speed['float']}) on {speed['threads']} threads where the pipeline ran. Gate: {q['gate']['reason']}."
    )


def register_int8(
    p: Params,
    registry: Registry,
    name: str,
    source_gate: dict[str, Any],
    source: str,
    q: dict[str, Any],
    train_metrics: Path,
    log_model: Callable[[], str],
    card: tuple[dict[str, str], str],
    tags: dict[str, str],
) -> dict[str, Any]:
    """Register one int8 variant, when its gate passed (`q`: its stage's metrics file), into its float model's
    training run; promote it when its float version (`source_gate`: that version's gate report) was promoted.

    Args:
        train_metrics: the float model's training metrics (they name its run).
        log_model: logs the variant into the active run and returns its model URI.
        card: the version's held-out tags and its description.
    """
    alias = p.models.champion_alias
    out: dict[str, Any] = {"version": None, "source": source, "source_version": source_gate["version"],
                           "reason": q["gate"]["reason"]}  # fmt: skip
    if not q["gate"]["passed"]:
        log.warning("%s not registered: %s", name, q["gate"]["reason"])
        return out | {"champion_version": registry.find(name, alias)}
    with resume_run(json.loads(train_metrics.read_text())["run_id"]):
        uri = log_model()
    heldout, description = card
    card_tags = {"variant": "int8", "quantized_from": source, "quantization.method": q["method"], **heldout,
                 "gate.decision": "registered", "gate.reasons": q["gate"]["reason"]}  # fmt: skip
    new = registry.register(uri, name, tags | card_tags)
    registry.tag(name, new, {}, description=description)
    if source_gate["champion_version"] == source_gate["version"]:
        registry.promote(name, alias, new)
        log.info("promoted model=%s version=%s alias=%s (the int8 form of %s)", name, new, alias, source)
    return out | {"version": new, "champion_version": registry.find(name, alias)}


def register_chat_int8(p: Params, registry: Registry, chat: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """The int8 variant of the chat version just gated (stage `quantize_chat`), registered by `register_int8`."""
    q = json.loads(paths.QUANTIZE_CHAT_METRICS.read_text())
    source = f"{p.models.chat_name}/{chat['version']}"
    heldout = {"heldout.eval_loss": str(q["int8"]["eval_loss"]), "heldout.answer_f1": str(q["int8"]["answer_f1"]),
               "heldout.top_token_agreement": str(q["top_token_agreement"])}  # fmt: skip
    return register_int8(
        p, registry, p.models.chat_int8_name, chat, source, q, paths.TRAIN_CHAT_METRICS,
        lambda: log_int8_chat_model(paths.CHAT_INT8_MODEL, pins("transformers", "torch", "safetensors")),
        (heldout, chat_int8_card(q, source)), tags,
    )  # fmt: skip


def embedder_int8_card(q: dict[str, Any], source: str) -> str:
    """The int8 embedder version's description (stage `quantize_embedder`)."""
    m, f, i, speed = q["metric"], q["float"], q["int8"], q["chunks_per_s"]
    return (
        f"int8 variant of {source} ({q['method']}: its transformer exported to ONNX, int8 weights per output channel, "
        f"activations quantised per batch; mean pooling and normalising as the float model). Runs on ONNX Runtime, "
        f"CPU only; its vectors are not the float model's (mean cosine {q['cosine_with_float']['mean']}), so it "
        f"searches only a collection built with it (`index.variants: [..., int8]`). Held-out dense {m} "
        f"{i['dense'][m]} (float {f['dense'][m]}), hybrid {i['hybrid'][m]} (float {f['hybrid'][m]}); "
        f"{speed['int8']} chunks/s (float {speed['float']}) at batch {speed['batch_size']} on {speed['threads']} "
        f"threads where the pipeline ran. Gate: {q['gate']['reason']}."
    )


def register_embedder_int8(
    p: Params, registry: Registry, embedder: dict[str, Any], tags: dict[str, str]
) -> dict[str, Any]:
    """The int8 form of the embedder version just gated (stage `quantize_embedder`), registered by `register_int8`."""
    q = json.loads(paths.QUANTIZE_EMBEDDER_METRICS.read_text())
    source, m = f"{p.models.embedder_name}/{embedder['version']}", q["metric"].replace("@", "_at_")
    heldout = {f"heldout.dense.{m}": str(q["int8"]["dense"][q["metric"]]),
               f"heldout.hybrid.{m}": str(q["int8"]["hybrid"][q["metric"]]),
               "heldout.cosine_with_float": str(q["cosine_with_float"]["mean"])}  # fmt: skip
    return register_int8(
        p, registry, p.models.embedder_int8_name, embedder, source, q, paths.TRAIN_EMBEDDER_METRICS,
        lambda: log_int8_embedder_model(paths.EMBEDDER_INT8_MODEL, pins("onnxruntime", "transformers", "numpy")),
        (heldout, embedder_int8_card(q, source)), tags,
    )  # fmt: skip


def reranker_int8_card(q: dict[str, Any], source: str) -> str:
    """The int8 reranker version's description (stage `quantize_reranker`)."""
    m, f, i, ms = q["metric"], q["float"]["reranked"], q["int8"]["reranked"], q["ms_per_question"]
    return (
        f"int8 variant of {source} ({q['method']}: its classifier exported to ONNX, int8 weights per output channel, "
        f"activations quantised per batch; relevance is the sigmoid of its logit, as the float model's). Runs on ONNX "
        f"Runtime, CPU only. Scores within {q['score_difference']['max']} of the float model's on "
        f"{q['score_difference']['pairs']} held-out pairs (mean {q['score_difference']['mean']}); held-out reranked "
        f"{m} {i[m]} (float {f[m]}); {ms['int8']['p50']} ms p50 per question of {ms['candidates']} candidates "
        f"(float {ms['float']['p50']}) at batch {ms['batch_size']} on {ms['threads']} threads where the pipeline ran. "
        f"Gate: {q['gate']['reason']}."
    )


def register_reranker_int8(
    p: Params, registry: Registry, reranker: dict[str, Any], tags: dict[str, str]
) -> dict[str, Any]:
    """The int8 form of the reranker version just gated (stage `quantize_reranker`), registered by `register_int8`."""
    q = json.loads(paths.QUANTIZE_RERANKER_METRICS.read_text())
    source, m = f"{p.models.reranker_name}/{reranker['version']}", q["metric"].replace("@", "_at_")
    card: tuple[dict[str, str], str] = ({}, "")  # not measured (`skipped`): the gate refused, nothing is registered
    if "int8" in q:
        heldout = {f"heldout.reranked.{m}": str(q["int8"]["reranked"][q["metric"]]),
                   "heldout.score_difference_max": str(q["score_difference"]["max"])}  # fmt: skip
        card = (heldout, reranker_int8_card(q, source))
    return register_int8(
        p, registry, p.models.reranker_int8_name, reranker, source, q, paths.TRAIN_RERANKER_METRICS,
        lambda: log_int8_reranker_model(paths.RERANKER_INT8_MODEL, pins("onnxruntime", "transformers", "numpy")),
        card, tags,
    )  # fmt: skip
