"""How many hybrid candidates to rerank (`retrieval.rerank_candidates`): `python -m benchmarks.rerank_candidates`.

For each count, on the held-out questions over the evaluate stage's chunks (`evaluation.retrieval.QuestionSet`):
- the ceiling: the share of questions whose document is among the first N hybrid chunks' documents (what a reranker
  can lift to the top; hybrid's recall@10 stays whatever N is, as the chunks after the head keep their order);
- the pipeline's reranker's reranked metrics (each pair scored once, over the largest count's chunks);
- its cost per question through the served engine, one question at a time (`rag_latency.rerank_in_process`: float
  at `serving.rerank_batch_size`, float in one batch of 32, and int8 when stage quantize_reranker made it), on the
  questions `--timed` selects (not the first 24, which stage quantize_reranker times).
Needs the pipeline's outputs (`dvc repro`); about 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--counts", type=int, nargs="+", default=[6, 8, 10])
    ap.add_argument("--timed", type=int, nargs=2, default=[24, 72], help="held-out question slice to time")
    args = ap.parse_args()

    from benchmarks.rag_latency import rerank_in_process
    from core import paths
    from core.config import params
    from core.loading import load_embedder, load_reranker
    from evaluation.retrieval import QuestionSet

    p = params()
    qs = QuestionSet.load(p)
    hybrid = qs.scored_rankings(load_embedder(paths.EMBEDDER_MODEL, device="cpu"), p)[0]["hybrid"]
    texts, asked = qs.chunks["text"].to_list(), qs.questions["query"].to_list()
    doc_of, relevant = qs.chunks["doc_id"].to_list(), qs.questions["doc_id"].to_list()
    most = max(args.counts)
    pairs = [(q, texts[j]) for q, r in zip(asked, hybrid, strict=True) for j in r[:most]]
    scores = [float(s) for s in load_reranker(paths.RERANKER_MODEL, device="cpu").predict(pairs, batch_size=64)]

    out: dict[str, object] = {"questions": len(asked), "hybrid": qs.metrics(hybrid, p)}
    first, last = args.timed
    for n in sorted(args.counts):
        reranked = []
        for i, ranking in enumerate(hybrid):
            head = scores[i * most : i * most + n]
            order = sorted(range(n), key=lambda k: -head[k])  # stable: ties keep hybrid's order
            reranked.append([ranking[k] for k in order] + list(ranking[n:]))
        ceiling = sum(d in {doc_of[j] for j in r[:n]} for r, d in zip(hybrid, relevant, strict=True)) / len(asked)
        candidates = [[texts[j] for j in r[:n]] for r in hybrid[first:last]]
        out[str(n)] = {
            "answer_document_in_candidates": round(ceiling, 4),
            "reranked": qs.metrics(reranked, p),
            "ms_per_question": rerank_in_process(asked[first:last], candidates),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
