"""Stage `report`: the last run as one self-contained HTML page, `artifacts/reports/pipeline.html`.

What a person checks after `dvc repro`, in the order the pipeline made it: the corpus (documents, skipped files
and why, chunks, their token lengths), training (loss curves), retrieval and generation quality (base,
fine-tuned and the current champion side by side, the naive recipe for reference), the gates' decisions with
their reasons, and the registry versions the run produced. It reads only the files earlier stages wrote (their
DVC outputs), so it re-runs when any of them changes and costs seconds. `dvc plots show` draws the same curves
from the same CSVs; the look is `core/html_report.py`'s, shared with the benchmark reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from core import paths
from core.html_report import Report, new_figure, verdict
from core.io import atomic_write
from core.log import get_logger

log = get_logger(__name__)

RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _csv(path: Path) -> pl.DataFrame | None:
    return pl.read_csv(path) if path.exists() else None


def write_csv(df: pl.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.write_csv(tmp))


def corpus(r: Report) -> None:
    ingest = _json(paths.INGEST_REPORT)
    stats = _json(paths.DATASETS_STATS)
    chunks = pl.read_parquet(paths.CHUNKS, columns=["n_tokens"])
    r.section("Corpus", "corpus").stats(
        [
            ("files found", ingest.get("n_files")),
            ("documents read", ingest.get("n_read")),
            ("files skipped", ingest.get("n_skipped")),
            ("characters", ingest.get("n_chars")),
            ("chunks", chunks.height),
            ("held-out documents", stats.get("docs", {}).get("eval")),
        ]
    )
    formats = ", ".join(f"{k}: {v}" for k, v in ingest.get("read_by_format", {}).items())
    r.paragraph(f"Read by format: {formats or 'none'}.")
    skipped = ingest.get("skipped", [])
    if skipped:
        r.table(["skipped file", "reason", "detail"], [(s["source"], s["reason"], s.get("detail")) for s in skipped])
    fig, ax = new_figure()
    counts, edges, _ = ax.hist(chunks["n_tokens"].to_list(), bins=40, color="#2457c5")
    histogram = pl.DataFrame({"tokens": [round(float(e)) for e in edges[:-1]], "chunks": [int(c) for c in counts]})
    write_csv(histogram, paths.CHUNK_TOKENS_PLOT)  # the same counts for `dvc plots show`
    ax.set(xlabel="tokens per chunk (embedder's tokenizer)", ylabel="chunks")
    q = chunks["n_tokens"]
    median, p95, longest = float(q.median() or 0), float(q.quantile(0.95) or 0), int(q.max() or 0)  # type: ignore[arg-type]
    caption = f"Chunk lengths: median {median:.0f} tokens, 95th percentile {p95:.0f}, max {longest}"
    r.figure(fig, caption)


def training(r: Report) -> None:
    r.section("Training", "training")
    models = {
        "embedder": (paths.EMBEDDER_LOSS_PLOT, paths.TRAIN_EMBEDDER_METRICS),
        "reranker": (paths.RERANKER_LOSS_PLOT, paths.TRAIN_RERANKER_METRICS),
        "chat": (paths.CHAT_LOSS_PLOT, paths.TRAIN_CHAT_METRICS),
    }
    curves = [(name, _csv(plot)) for name, (plot, _) in models.items()]
    found = [(name, df) for name, df in curves if df is not None and df.height]
    rows = []
    for name, (_, metrics) in models.items():
        m = _json(metrics)
        if m:
            examples = m.get("train_pairs", m.get("train_examples"))
            seconds = m.get("train_seconds")
            seconds = round(seconds) if isinstance(seconds, (int, float)) else None
            rows.append((name, m.get("steps"), examples, m.get("train_loss"), seconds, m.get("run_id")))
    r.table(["model", "steps", "examples", "final train loss", "seconds", "MLflow run"], rows)
    if found:
        fig, axes = new_figure(10, 3.2, cols=len(found))
        for ax, (name, df) in zip(axes if len(found) > 1 else [axes], found, strict=True):
            ax.plot(df["step"].to_list(), df["loss"].to_list(), marker=".", color="#2457c5")
            ax.set(title=name, xlabel="step", ylabel="training loss")
            ax.grid(alpha=0.3)
        r.figure(fig, "Training loss (the same CSVs `dvc plots show` draws)")


def retrieval(r: Report) -> None:
    ev = _json(paths.EVAL_METRICS)
    reg = _json(paths.REGISTER_REPORT)
    r.section("Retrieval quality on held-out questions", "retrieval")
    emb = reg.get("embedder", {})
    rows: list[tuple[Any, ...]] = []
    named = [
        ("naive recipe (fixed characters, base embedder)", ev.get("naive")),
        ("dense, base embedder", ev.get("embedder", {}).get("base")),
        ("dense, fine-tuned embedder", ev.get("embedder", {}).get("finetuned")),
        ("lexical (BM25)", ev.get("lexical")),
        ("hybrid, base embedder", ev.get("hybrid", {}).get("base")),
        ("hybrid, fine-tuned embedder", ev.get("hybrid", {}).get("finetuned")),
        ("hybrid + reranker", ev.get("reranked")),
    ]
    for label, scores in named:
        if scores:
            rows.append((label, *(scores.get(m) for m in RETRIEVAL_METRICS)))
    served = reg.get("retrieval", {})
    if served.get("served_scores"):
        label = f"served: retrieval v{served.get('version')} ({served.get('mode')}, chunks {served.get('chunking')})"
        rows.append((label, *(served["served_scores"].get(m) for m in RETRIEVAL_METRICS)))
    r.table(["configuration", *RETRIEVAL_METRICS], rows, "Each question is judged against its own document's chunks")
    plot = _csv(paths.RECALL_PLOT)
    if plot is not None:
        fig, ax = new_figure()
        for column in plot.columns[1:]:
            ax.plot(plot["k"].to_list(), plot[column].to_list(), marker="o", label=column)
        ax.set(xlabel="k", ylabel="recall@k", xscale="log")
        ax.set_xticks(plot["k"].to_list(), [str(k) for k in plot["k"].to_list()])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        r.figure(fig, "Recall@k on the held-out questions")
    if emb:
        metric = emb.get("metric", "")
        r.table(
            ["embedder", metric, "registry version"],
            [
                ("base", emb.get("base"), emb.get("base_version")),
                ("fine-tuned candidate", emb.get("candidate"), emb.get("version")),
                ("champion", emb.get("champion"), emb.get("champion_version")),
            ],
            "Base, candidate and the champion now, on the gate's metric",
        )
    q = _json(paths.QUANTIZE_EMBEDDER_METRICS)
    if q:
        m, speed = q.get("metric", ""), q.get("chunks_per_s", {})
        r.table(
            ["fine-tuned embedder", f"dense {m}", f"hybrid {m}", "chunks/s", "cosine with float"],
            [
                ("float (sentence-transformers)", q["float"]["dense"].get(m), q["float"]["hybrid"].get(m),
                 f"{speed.get('float')}", "1"),
                (f"int8 ({q.get('method')})", q["int8"]["dense"].get(m), q["int8"]["hybrid"].get(m),
                 f"{speed.get('int8')}", f"{q.get('cosine_with_float', {}).get('mean')}"),
            ],
            f"Its int8 form (stage `quantize_embedder`): chunks/s at batch {speed.get('batch_size')} on "
            f"{speed.get('threads')} threads where the pipeline ran",
        )  # fmt: skip
    q = _json(paths.QUANTIZE_RERANKER_METRICS)
    if q.get("skipped"):
        r.paragraph(f"The reranker's int8 form (stage `quantize_reranker`) was not measured: {q['skipped']}.")
    elif q:
        m, ms = q.get("metric", ""), q.get("ms_per_question", {})
        r.table(
            ["reranker", f"hybrid + reranker {m}", "ms p50 per question", "score difference (max)"],
            [
                ("float (sentence-transformers)", q["float"]["reranked"].get(m), ms.get("float", {}).get("p50"), "0"),
                (f"int8 ({q.get('method')})", q["int8"]["reranked"].get(m), ms.get("int8", {}).get("p50"),
                 f"{q.get('score_difference', {}).get('max')}"),
            ],
            f"Its int8 form (stage `quantize_reranker`): one question's {ms.get('candidates')} candidates at a time, "
            f"batch {ms.get('batch_size')}, on {ms.get('threads')} threads where the pipeline ran",
        )  # fmt: skip
    chunking = _json(paths.CHUNKING).get("candidates", {})
    if chunking:
        r.table(
            ["chunking candidate", "chunks", "dense mrr@10", "lexical mrr@10", "hybrid mrr@10"],
            [
                (name, c.get("chunks"), *(c.get(mode, {}).get("mrr@10") for mode in ("dense", "lexical", "hybrid")))
                for name, c in chunking.items()
            ],
            "Chunking candidates scored by `select_chunking` (the best one is used downstream)",
        )


def generation(r: Report) -> None:
    ev = _json(paths.EVAL_METRICS).get("chat", {})
    q = _json(paths.QUANTIZE_CHAT_METRICS)
    rag = _json(paths.RAG_METRICS)
    r.section("Generation quality", "generation")
    models = (
        ("base", ev.get("base", {})),
        ("fine-tuned", ev.get("finetuned", {})),
        ("fine-tuned, int8", q.get("int8")),
    )
    rows = [(label, m.get("eval_loss"), m.get("perplexity"), m.get("answer_f1")) for label, m in models if m]
    r.table(["chat model", "held-out loss", "perplexity", "answer F1"], rows)
    if q:
        tps = q.get("tokens_per_s_one_stream", {})
        r.paragraph(
            f"int8 ({q.get('method')}): top-token agreement with the float model {q.get('top_token_agreement')}, "
            f"one stream {tps.get('int8')} tokens/s against {tps.get('float')} in float."
        )
    if rag:
        r.table(
            ["RAG end to end", "questions", "answer F1", "citation precision", "cited rate", "abstention rate"],
            [
                (label, m.get("questions"), m.get("answer_f1"), m.get("citation_precision"), m.get("cited_rate"),
                 m.get("abstention_rate"))
                for label, m in (("naive recipe + base chat", rag.get("naive", {})),
                                 ("served retrieval + base chat", rag.get("base", {})),
                                 ("served retrieval + fine-tuned chat", rag.get("finetuned", {}))) if m
            ],
        )  # fmt: skip


def gates(r: Report) -> None:
    reg = _json(paths.REGISTER_REPORT)
    r.section("Gate decisions", "gates")
    for name in ("embedder", "chat"):
        d = reg.get(name)
        if not d:
            continue
        outcome = "promoted to champion" if d.get("promote") or d.get("promote_base") else "not promoted"
        r.paragraph(f"<b>{name}</b> v{d.get('version')}: {verdict(bool(d.get('promote')), outcome)}", raw=True)
        r.bullets(d.get("reasons", []))
    int8 = {"chat_int8": reg.get("chat_int8"), "embedder_int8": reg.get("embedder_int8"),
            "reranker_int8": reg.get("retrieval", {}).get("reranker", {}).get("int8")}  # fmt: skip
    for name, q in int8.items():
        if q:
            registered = q.get("version") is not None
            outcome = "registered" if registered else "refused"
            label = name.replace("_", " ")
            r.paragraph(f"<b>{label}</b> (from {q.get('source')}): {verdict(registered, outcome)}", raw=True)
            r.bullets([q.get("reason", "")])
    ret = reg.get("retrieval", {})
    if ret:
        r.paragraph(
            f"<b>retrieval</b> v{ret.get('version')}: {verdict(True, 'served')} "
            f"({ret.get('mode')}, chunks {ret.get('chunking')}, embedder v{ret.get('embedder_version')}"
            + (f", int8 form v{ret['embedder_int8_version']}" if ret.get("embedder_int8_version") else "")
            + (f", reranker v{ret['reranker']['version']}" if ret.get("reranker", {}).get("promote") else "")
            + ")",
            raw=True,
        )
        champion = reg.get("embedder", {}).get("champion_version")
        if champion and champion != ret.get("embedder_version"):
            r.paragraph(
                f"The unit searches with embedder v{ret.get('embedder_version')} while embedder@champion is "
                f"v{champion}: the embedder gate judges dense search alone; the unit is chosen on what it serves."
            )
        r.bullets(ret.get("reasons", []))
        if ret.get("versus_naive"):
            r.paragraph(ret["versus_naive"].get("summary", ""))


def registry(r: Report) -> None:
    reg = _json(paths.REGISTER_REPORT)
    manifest = _json(paths.INDEX_MANIFEST)
    r.section("Registry versions from this run", "registry")
    rows = []
    for name, d in (("embedder", reg.get("embedder", {})), ("chat", reg.get("chat", {})),
                    ("chat-int8", reg.get("chat_int8", {})), ("embedder-int8", reg.get("embedder_int8", {})),
                    ("retrieval", reg.get("retrieval", {})),
                    ("reranker", reg.get("retrieval", {}).get("reranker", {})),
                    ("reranker-int8", reg.get("retrieval", {}).get("reranker", {}).get("int8", {}))):  # fmt: skip
        if d:
            rows.append((name, d.get("version"), d.get("champion_version")))
    r.table(["registered model", "version made", "champion now"], rows, "`mlflow ui` from the repo root shows them")
    variants = manifest.get("variants") or ({"float": manifest} if manifest else {})
    for variant, built in variants.items():
        if "skipped" in built:
            r.paragraph(f"Index ({variant}): none: {built['skipped']}.")
        else:
            r.paragraph(
                f"Index ({variant}): Chroma collection {built.get('collection')} with {built.get('count')} vectors "
                f"from {built.get('embedder_name')} v{built.get('embedder_version')}."
            )


def build() -> Report:
    r = Report("modelplatform: the last pipeline run", "Written by `dvc repro` (stage `report`) from the run's outputs")
    for part in (corpus, training, retrieval, generation, gates, registry):
        part(r)
    return r


def main() -> None:
    path = build().write(paths.PIPELINE_REPORT)
    log.info("pipeline report written path=%s bytes=%d", path.relative_to(paths.PROJECT_ROOT), path.stat().st_size)


if __name__ == "__main__":
    main()
