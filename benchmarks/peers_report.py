"""The peers benchmark's report (benchmarks/peers.py): ratios on the figures the targets name, the markdown
table, and the plots (throughput against concurrency, TTFT CDF at 16 streams)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.html_report import Report

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 16)


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Ours over each peer and limit, on the figures the targets name."""
    chat, emb, lim = report["chat"], report["embed"], report["limits"]

    def tps(name: str, n: int) -> float | None:
        r = chat.get(name)
        return r[str(n)]["tokens_per_s"] if isinstance(r, dict) else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    out: dict[str, Any] = {}
    for ours in ("ours (float)", "ours (int8)"):
        for peer in ("llama-server (Q4_1 GGUF)", "transformers serve --continuous-batching"):
            for n in (1, 16):
                out[f"{ours} / {peer}, {n} stream{'s' if n > 1 else ''}"] = div(tps(ours, n), tps(peer, n))
    if isinstance(emb.get("ours"), dict):
        e = emb["ours"]["64"]["texts_per_s"]
        if isinstance(emb.get("infinity"), dict):
            out["embeddings ours / infinity, 64 clients"] = div(e, emb["infinity"]["64"]["texts_per_s"])
            out["embeddings ours / infinity, 1 client"] = div(
                emb["ours"]["1"]["texts_per_s"], emb["infinity"]["1"]["texts_per_s"]
            )
        if isinstance(emb.get("ours (torch)"), dict):
            out["embeddings ours / ours on torch, 64 clients"] = div(e, emb["ours (torch)"]["64"]["texts_per_s"])
        out["embeddings ours / best offline encode, 64 clients"] = div(
            e, max(lim["encode_texts_per_s_by_batch"].values())
        )
        if "encode_onnx_texts_per_s_by_batch" in lim:
            out["embeddings ours / best offline encode on ONNX Runtime, 64 clients"] = div(
                e, max(lim["encode_onnx_texts_per_s_by_batch"].values())
            )
    if isinstance(emb.get("ours (int8)"), dict):  # serving.embedder_variant: int8, over its own collection
        i8 = emb["ours (int8)"]
        if isinstance(emb.get("infinity"), dict):
            for n in ("64", "1"):
                clients = f"{n} client{'s' if n != '1' else ''}"
                out[f"embeddings ours int8 / infinity, {clients}"] = div(
                    i8[n]["texts_per_s"], emb["infinity"][n]["texts_per_s"]
                )
        if "encode_texts_per_s_by_batch" in lim:
            out["embeddings ours int8 / best offline fp32 encode, 64 clients"] = div(
                i8["64"]["texts_per_s"], max(lim["encode_texts_per_s_by_batch"].values())
            )
    return out


def _mb(r: dict[str, Any]) -> str:
    return f"{r['memory_mb']:,.0f} MB" if "memory_mb" in r else "—"


def _rows(header: str, servers: dict[str, Any], cells: Callable[[dict[str, Any]], list[Any]]) -> list[str]:
    """A table: the header, then one row per server (its figures and memory, or why it did not run)."""
    width = header.count("|") - 1
    out = [header, "|" + "---|" * width]
    for name, r in servers.items():
        row = [r] + [""] * (width - 2) if isinstance(r, str) else [*cells(r), _mb(r)]
        out.append("| " + " | ".join(str(c) for c in [name, *row]) + " |")
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['date']} on {report['machine']} (client and servers share the cores); "
        "`make bench-peers && make bench`.",
        "",
    ]
    lines += _rows(
        "| chat server | 1 stream tokens/s | 4 streams | 16 streams | TTFT p50 at 16 | memory (PSS) |",
        report["chat"],
        lambda r: [r["1"]["tokens_per_s"], r["4"]["tokens_per_s"], r["16"]["tokens_per_s"],
                   f"{r['16']['ttft_median_s']} s"],
    )  # fmt: skip
    lines.append("")
    lines += _rows(
        "| embeddings server | 1 client texts/s (p50) | 64 clients texts/s | p99 at 64 | errors | memory (PSS) |",
        report["embed"],
        lambda r: [f"{r['1']['texts_per_s']} ({r['1']['p50_ms']} ms)", r["64"]["texts_per_s"],
                   f"{r['64']['p99_ms']} ms", r["64"]["errors"]],
    )  # fmt: skip
    lines += rag_rows(report.get("rag", {}))
    lim = report["limits"]
    lines += ["", "| in-process limit | figure |", "|---|---|"]
    for name in ("float", "int8"):
        g = lim.get(f"generate_{name}")
        if isinstance(g, dict):
            lines.append(f"| `generate` {name}, one stream | {g['one_stream_tokens_per_s']} tokens/s |")
            lines.append(f"| `generate` {name}, static batch of 16 | {g['static_batch_16_tokens_per_s']} tokens/s |")
    runtimes = (("encode", "`encode`"), ("encode_onnx", "`encode` on ONNX Runtime fp32 (what the server runs)"),
                ("encode_int8", "int8 ONNX embedder (`serving.embedder_variant: int8`)"))  # fmt: skip
    for key, name in runtimes:
        if f"{key}_texts_per_s_by_batch" in lim:
            best = max(lim[f"{key}_texts_per_s_by_batch"].items(), key=lambda kv: kv[1])
            lines.append(f"| {name}, best batch ({best[0]}) | {best[1]} texts/s |")
            lines.append(f"| {name}, one text | {lim[f'{key}_one_text_ms']} ms |")
    lines += [f"| weights of {name} | {mb:,.0f} MB |" for name, mb in lim.get("weights_mb", {}).items()]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v}× |" for k, v in report["ratios"].items() if v is not None]
    lines += ["", "Commands:", ""] + [f"- {k}: `{v}`" for k, v in report["commands"].items()]
    return "\n".join(lines) + "\n"


def rag_rows(rag: dict[str, Any]) -> list[str]:
    """Cited answers under load per chat variant, the stages before generation, and the targets."""
    answers = {k: v for k, v in rag.items() if k.startswith("ours")}
    if not answers:
        return []
    first = next((v for v in answers.values() if isinstance(v, dict)), {"clients": "?", "max_tokens": "?"})
    lines = [
        "",
        f"| RAG server ({first['clients']} concurrent, {first['max_tokens']}-token answers) | seconds per answer p50 "
        "| TTFT p50 | gap between tokens p99 (longest) | tokens/s | prompt tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in answers.items():
        cells = [r, "", "", "", ""] if isinstance(r, str) else [
            r["seconds_per_answer_p50"], f"{r['ttft_p50_s']} s",
            f"{r['token_gap_p99_s']} s ({r.get('token_gap_max_s', '—')} s)", r["tokens_per_s"],
            r["prompt_tokens_mean"],
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in [name, *cells]) + " |")
    stages = rag.get("stages", {})
    lines += ["", "| RAG stage before generation (server's `Server-Timing`) | p50 | p99 |", "|---|---|---|"]
    for name in ("retrieve", "rerank", "prompt", "before_generation"):
        if f"{name}_ms" in stages:
            ms = stages[f"{name}_ms"]
            lines.append(f"| {name.replace('_', ' ')} | {ms['p50']} ms | {ms['p99']} ms |")
    in_process = rag.get("rerank_in_process")
    if isinstance(in_process, dict):
        for form in ("float", "float, one batch of 32", "int8"):
            ms = in_process.get(form, in_process if form == "float" else None)
            if isinstance(ms, dict):
                batch = "" if "batch of" in form else f", batch {in_process.get('batch_size', 32)}"
                lines.append(
                    f"| rerank {in_process['candidates']} candidates, {form}{batch} (in process: no reranker is "
                    f"served) | {ms['p50']} ms | {ms['p99']} ms |"
                )
    lines += [f"| target: {k} | {v} | |" for k, v in rag.get("targets", {}).items()]
    return lines


def _save(fig: Any, ax: Any, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plots(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, r in report["chat"].items():
        if isinstance(r, dict):
            ax.plot(CONCURRENCY, [r[str(n)]["tokens_per_s"] for n in CONCURRENCY], marker="o", label=name)
    ax.set(xlabel="concurrent streams", ylabel="tokens/s (all streams)", xscale="log", xticks=CONCURRENCY,
           title=f"Chat throughput, {report['max_tokens']}-token greedy answers")  # fmt: skip
    ax.set_xticklabels([str(n) for n in CONCURRENCY])
    made.append(_save(fig, ax, folder / "throughput.png"))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, r in report["chat"].items():
        if isinstance(r, dict):
            t = sorted(r["16"]["ttfts_s"])
            ax.step(t, [(i + 1) / len(t) for i in range(len(t))], where="post", label=name)
    ax.set(xlabel="time to first token (s)", ylabel="share of streams", title="TTFT at 16 concurrent streams")
    made.append(_save(fig, ax, folder / "ttft_cdf.png"))
    plt.close("all")
    return made


def publish(folder: Path, report: dict[str, Any], table: str, made: list[Path], docs_name: str | None) -> None:
    """Write `report.json`, `report.md` (`table`) and `report.html` (the table and the plots `made`, in the pipeline
    report's look: core/html_report.py) into `folder` and print the table; with `docs_name`, copy the table (under
    that name) and the plots into docs/bench/ for the README."""
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(table)
    page = Report(f"modelplatform benchmark: {folder.name}", "Written by `make bench`; the figures are report.json's")
    page.markdown_table(table)
    page.section("Plots")
    for path in made:
        page.image(path, path.stem.replace("_", " "))
    page.write(folder / "report.html")
    print(table)
    if docs_name:
        docs = ROOT / "docs" / "bench"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "report.md", docs / docs_name)
        for path in made:
            shutil.copy(path, docs / path.name)
    print(f"written to {folder.relative_to(ROOT)}")
