"""Scale: how the data path and search grow with the corpus, at 1× and 10× the default corpus end to end and at 100×
with synthetic vectors; a table and a plot.

    .venv/bin/python -m benchmarks.scale [--docs]        # part of `make bench`; ~6 min on 2 cores

k× corpus: the default corpus copied k times into a temporary folder, each copy's files ending in a line naming the
copy (so no copy is dropped as a duplicate). Each step is the pipeline's own code, in process:
    ingest      `data.ingest.ingest` over the folder
    chunk       `data.chunk.chunk_documents` with the chosen chunking
    embed       the served embedder's `encode` over the chunks: timed on the first `--embed-sample` chunks and
                scaled by the chunk count (it is linear, and 45,000 chunks would take ~30 min here)
    index       Chroma `add` of every chunk (ids, text, metadata, vectors) into a new on-disk collection, and the BM25
                index build (`core.lexical.LexicalIndex.build`)
    search      dense top-10 (Chroma HNSW) and BM25 top-10 for held-out questions, one at a time: p50 and p99
At 1× the vectors are the served index's own; copies reuse them with a little noise (a copy of a chunk is as near to a
query as the chunk is, which is what a bigger corpus of similar text looks like to HNSW). At 100× there are no
documents, only vectors (the default corpus's, each copy perturbed): dense search latency only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "state" / "bench" / "scale"
QUERIES = 50
TOP_K = 10
ADD_BATCH = 4096  # under Chroma's max batch size on its sqlite store (5461)


class Clock:
    """Seconds per named step: `with clock("ingest_s"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def _latency(fn: Callable[[Any], Any], queries: list[Any]) -> dict[str, float]:
    fn(queries[0])  # warm-up
    ms = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        ms.append((time.perf_counter() - start) * 1000)
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ordered[int(0.99 * (len(ms) - 1))], 2)}


def copied_corpus(source: Path, dest: Path, copies: int) -> Path:
    """`copies` copies of the corpus under `dest`, each file ending in a line that names its copy."""
    for i in range(copies):
        for f in source.rglob("*"):
            if f.is_file():
                target = dest / f"copy{i:03d}" / f.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                data = f.read_bytes()
                target.write_bytes(data + f"\n\nCopy {i} of this document.\n".encode() if i else data)
    return dest


def served_vectors(p: Any) -> tuple[list[str], np.ndarray]:
    """The active index's chunk ids and vectors (the served embedder's, normalised)."""
    from core.vectorstore import chroma_client, read_active

    client = chroma_client(p.index)
    active = read_active(client)
    if active is None:
        raise SystemExit("no active index: run `dvc repro` first")
    got = client.get_collection(active.collection).get(include=["embeddings"])
    return list(got["ids"]), np.asarray(got["embeddings"], dtype=np.float32)


def perturbed(vectors: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """`rows` vectors: `vectors` first, then copies of them each moved by a little noise and renormalised."""
    rng = np.random.default_rng(seed)
    out, have = [vectors[:rows]], min(rows, len(vectors))
    while have < rows:
        v = vectors[: rows - have] + rng.normal(0, 0.02, vectors[: rows - have].shape).astype(np.float32)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        have += len(v)
    return np.concatenate(out)


def chroma_add(folder: Path, ids: list[str], vectors: np.ndarray, chunks: Any | None) -> Any:
    """A new on-disk collection holding `vectors` (and the chunks' text and metadata, when given)."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(str(folder), settings=Settings(anonymized_telemetry=False))
    coll = client.create_collection("scale", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    for i in range(0, len(ids), ADD_BATCH):
        extra: dict[str, Any] = {}
        if chunks is not None:
            part = chunks.slice(i, ADD_BATCH)
            extra = {
                "documents": part["text"].to_list(),
                "metadatas": part.select("doc_id", "source", "title", "heading", "position").to_dicts(),
            }
        coll.add(ids=ids[i : i + ADD_BATCH], embeddings=vectors[i : i + ADD_BATCH], **extra)
        print(f"  chroma add {min(i + ADD_BATCH, len(ids)):,}/{len(ids):,}", flush=True)
    return coll


def run(factors: tuple[int, ...], synthetic: int, embed_sample: int) -> dict[str, Any]:
    import polars as pl

    from core import paths
    from core.chunking import chosen_chunking
    from core.config import params
    from core.lexical import LexicalIndex
    from core.loading import load_embedder
    from data.chunk import chunk_documents, load_tokenizer
    from data.ingest import ingest

    p = params()
    tokenizer, cp = load_tokenizer(), chosen_chunking(p)
    ids, vectors = served_vectors(p)
    embedder = load_embedder(paths.EMBEDDER_MODEL, device="cpu")
    questions = pl.read_parquet(paths.EVAL_QUESTIONS)["query"].head(QUERIES).to_list()
    vectors_asked = list(embedder.encode(questions, normalize_embeddings=True))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in factors:
            print(f"{k}× corpus", flush=True)
            clock = Clock()
            folder = copied_corpus(p.data.corpus_path(), Path(tmp) / f"corpus{k}", k)
            with clock("ingest_s"):
                docs, _ = ingest(folder, p.data.ingest)
            with clock("chunk_s"):
                chunks = chunk_documents(docs, tokenizer, cp)
            sample = chunks["text"].head(embed_sample).to_list()
            with clock("embed_sample_s"):
                embedder.encode(sample, batch_size=p.index.batch_size)
            chunk_ids, texts = chunks["chunk_id"].to_list(), chunks["text"].to_list()
            with clock("chroma_add_s"):
                coll = chroma_add(Path(tmp) / f"chroma{k}", chunk_ids, perturbed(vectors, chunks.height), chunks)
            with clock("bm25_build_s"):
                lexical = LexicalIndex.build(chunk_ids, texts, p.retrieval.stemmer)
            embed_s = round(clock.seconds.pop("embed_sample_s") * chunks.height / len(sample), 1)
            rows.append({
                "factor": k, "documents": docs.height, "vectors": chunks.height, **clock.seconds,
                "embed_s_estimated": embed_s,
                "dense": _latency(lambda v, c=coll: c.query(query_embeddings=[v], n_results=TOP_K), vectors_asked),
                "lexical": _latency(lambda q, x=lexical: x.search([q], TOP_K), questions),
            })  # fmt: skip
            print(f"  {json.dumps(rows[-1])}", flush=True)
        if synthetic:
            print(f"{synthetic}× vectors (synthetic)", flush=True)
            clock = Clock()
            many_ids = [f"{i}-{c}" for c in range(synthetic) for i in ids]
            with clock("chroma_add_s"):
                coll = chroma_add(Path(tmp) / "chroma-synthetic", many_ids, perturbed(vectors, len(many_ids)), None)
            rows.append({
                "factor": synthetic, "vectors": len(many_ids), **clock.seconds, "synthetic": True,
                "dense": _latency(lambda v: coll.query(query_embeddings=[v], n_results=TOP_K), vectors_asked),
            })  # fmt: skip
            print(f"  {json.dumps(rows[-1])}", flush=True)
    return {"embed_sample": embed_sample, "queries": len(questions), "top_k": TOP_K, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['date']} on {report['machine']}; `.venv/bin/python -m benchmarks.scale` (in process, "
        f"{report['queries']} held-out questions, top {report['top_k']}; embed time estimated from "
        f"{report['embed_sample']} chunks).",
        "",
        "| corpus | documents | chunks / vectors | ingest | chunk | embed (est.) | Chroma add | BM25 build "
        "| dense p50 (p99) | BM25 p50 (p99) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        name = f"{r['factor']}×" + (" (synthetic vectors)" if r.get("synthetic") else "")

        def s(key: str, row: dict[str, Any] = r) -> str:
            return f"{row[key]} s" if key in row else "—"

        def lat(key: str, row: dict[str, Any] = r) -> str:
            return f"{row[key]['p50_ms']} ms ({row[key]['p99_ms']})" if key in row else "—"

        steps = [s(k) for k in ("ingest_s", "chunk_s", "embed_s_estimated", "chroma_add_s", "bm25_build_s")]
        documents = f"{r['documents']:,}" if "documents" in r else "—"
        cells = [name, documents, f"{r['vectors']:,}", *steps, lat("dense"), lat("lexical")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], folder: Path) -> Path:
    """Left: each build step's seconds at 1× and 10× (log scale); right: search latency against the index size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (steps_ax, search_ax) = plt.subplots(1, 2, figsize=(11, 4))
    rows = report["rows"]
    corpora = [r for r in rows if not r.get("synthetic")]
    steps = [("ingest_s", "ingest"), ("chunk_s", "chunk"), ("embed_s_estimated", "embed (est.)"),
             ("chroma_add_s", "Chroma add"), ("bm25_build_s", "BM25 build")]  # fmt: skip
    width = 0.8 / max(len(corpora), 1)
    for i, r in enumerate(corpora):
        xs = [j + i * width for j in range(len(steps))]
        steps_ax.bar(xs, [r[key] for key, _ in steps], width, label=f"{r['factor']}× ({r['vectors']:,} chunks)")
    steps_ax.set_xticks([j + width * (len(corpora) - 1) / 2 for j in range(len(steps))], [name for _, name in steps])
    steps_ax.set_yscale("log")
    steps_ax.set_ylabel("seconds")
    steps_ax.set_title("Building the index")
    steps_ax.grid(alpha=0.3, axis="y")
    steps_ax.legend(fontsize=8)
    searches = (("dense", "dense top-10 (Chroma HNSW)", "C0"), ("lexical", "BM25 top-10 (bm25s)", "C2"))
    for key, label, color in searches:
        pts = [(r["vectors"], r[key]["p50_ms"], r[key]["p99_ms"]) for r in rows if key in r]
        if pts:
            xs, p50, p99 = zip(*pts, strict=True)
            search_ax.plot(xs, p50, marker="o", color=color, label=f"{label} p50")
            search_ax.plot(xs, p99, marker="x", linestyle="--", color=color, label=f"{label} p99")
    search_ax.set_xscale("log")
    search_ax.set_xlabel("chunks in the index (100×: synthetic vectors)")
    search_ax.set_ylabel("search latency (ms)")
    search_ax.set_title("Search latency against corpus size")
    search_ax.grid(alpha=0.3)
    search_ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "scale.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    from datetime import UTC, datetime

    from benchmarks.peers import machine
    from benchmarks.peers_report import publish

    ap = argparse.ArgumentParser()
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--synthetic", type=int, default=100, help="dense search over this many copies of the vectors")
    ap.add_argument("--embed-sample", type=int, default=512)
    ap.add_argument("--docs", action="store_true", help="copy report.md and scale.png into docs/bench/")
    ap.add_argument("--replot", action="store_true", help="redraw the table and plot from the last report.json")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.replot:
        report = json.loads((OUT / "report.json").read_text())
    else:
        report = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine()}
        report |= run(tuple(a.factors), a.synthetic, a.embed_sample)
    publish(OUT, report, markdown(report), [plot(report, OUT)], "scale.md" if a.docs else None)


if __name__ == "__main__":
    main()
