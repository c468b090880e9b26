"""Retrieval quality: recall@k, MRR@10 and nDCG@10 of an embedder over a chunking.

Held-out questions (data/questions.py) judged per document, for any chunking, with the naive recipe as a
baseline row (bottom of this file). The heading queries judged per chunk id (sentence-transformers'
InformationRetrievalEvaluator) were a second set until issue 16's 30-minute budget: the datasets stage still
writes them (embed_eval_queries, embed_eval_corpus).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from core import paths
from core.config import Params, RetrievalParams
from core.fusion import reciprocal_rank_fusion
from core.lexical import LexicalIndex

# ---- per-document retrieval on the held-out questions ------------------------------------------------
# Relevance is judged per document, not per chunk id: a question is answered when its document comes
# back, whatever the chunking, so configurations that chunk differently are compared on one footing.
# Rankings are exact cosine search over every chunk, reduced to distinct documents in order of their
# best chunk (what a user sees as "the first 10 documents").


def naive_chunks(docs: pl.DataFrame, size_chars: int, overlap_chars: int) -> pl.DataFrame:
    """The recipe people write by hand: fixed windows of `size_chars` characters, `overlap_chars` shared
    (`data.chunk.char_windows`, the `chars` chunking method).

    Returns:
        Columns `chunk_id, doc_id, text`.
    """
    from data.chunk import char_windows

    rows = [
        {"chunk_id": f"{doc_id}-n{i:05d}", "doc_id": doc_id, "text": text[a:b]}
        for doc_id, text in zip(docs["doc_id"], docs["text"], strict=True)
        for i, (a, b) in enumerate(char_windows(text, size_chars, overlap_chars))
    ]
    return pl.DataFrame(rows, schema={"chunk_id": pl.String, "doc_id": pl.String, "text": pl.String})


def dense_scored(
    model: SentenceTransformer, chunks: pl.DataFrame, queries: Sequence[str], depth: int, batch_size: int = 64
) -> tuple[list[list[int]], list[list[float]]]:
    """For each query, the rows of `chunks` (column `text`) by cosine similarity, best first, at most `depth`,
    and their similarities."""
    c = model.encode(chunks["text"].to_list(), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    q = model.encode(list(queries), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    sims, order = (q @ c.T).sort(dim=1, descending=True)
    rows, scores = order[:, :depth].cpu().tolist(), sims[:, :depth].cpu().tolist()
    return [[int(j) for j in r] for r in rows], [[float(x) for x in r] for r in scores]


def dense_rankings(
    model: SentenceTransformer, chunks: pl.DataFrame, queries: Sequence[str], depth: int, batch_size: int = 64
) -> list[list[int]]:
    """For each query, the rows of `chunks` (column `text`) by cosine similarity, best first, at most `depth`."""
    return dense_scored(model, chunks, queries, depth, batch_size)[0]


def lexical_rankings(index: LexicalIndex, queries: Sequence[str], depth: int) -> list[list[int]]:
    """Per query, the rows of the indexed chunks by BM25, best first, at most `depth` (rows sharing a term)."""
    row_of = {cid: i for i, cid in enumerate(index.ids)}
    return [[row_of[cid] for cid, _ in hits] for hits in index.search(queries, depth)]


def hybrid_rankings(dense: list[list[int]], lexical: list[list[int]], rp: RetrievalParams) -> list[list[int]]:
    """Each query's top `rp.candidates` dense and lexical rows fused by weighted reciprocal rank (core.fusion)."""
    return [
        [row for row, _ in reciprocal_rank_fusion([d[: rp.candidates], lx[: rp.candidates]], rp.weights(), rp.rrf_k)]
        for d, lx in zip(dense, lexical, strict=True)
    ]


def rerank_rankings(
    reranker: CrossEncoder,
    queries: Sequence[str],
    texts: Sequence[str],
    rankings: Sequence[Sequence[int]],
    top: int,
    batch_size: int = 64,
) -> tuple[list[list[int]], list[list[float]], float]:
    """Each ranking's first `top` rows reordered by the cross-encoder's score for (query, text); the rest
    keep their order after them. Every pair goes through one `predict` call (batched, sorted by length).

    Returns:
        The reranked rankings, each reranked head's scores (best first), and the milliseconds of scoring per query.
    """
    heads = [list(r[:top]) for r in rankings]
    pairs = [(q, texts[j]) for q, head in zip(queries, heads, strict=True) for j in head]
    t0 = time.perf_counter()
    scores = (
        [float(x) for x in reranker.predict(pairs, batch_size=batch_size, show_progress_bar=False)] if pairs else []
    )
    ms = (time.perf_counter() - t0) * 1000 / max(len(queries), 1)
    out, head_scores, i = [], [], 0
    for head, ranking in zip(heads, rankings, strict=True):
        s = scores[i : i + len(head)]
        i += len(head)
        order = sorted(range(len(head)), key=lambda k: -s[k])  # stable: ties keep the first stage's order
        out.append([head[k] for k in order] + list(ranking[len(head) :]))
        head_scores.append([s[k] for k in order])
    return out, head_scores, ms


def to_documents(rankings: Sequence[Sequence[int]], doc_of: Sequence[str], depth: int) -> list[list[str]]:
    """Chunk rankings reduced to the documents of their chunks, best first, without repeats, at most `depth`."""
    out = []
    for row in rankings:
        seen: dict[str, None] = {}
        for j in row:
            seen.setdefault(doc_of[j])
            if len(seen) == depth:
                break
        out.append(list(seen))
    return out


def rank_documents(
    model: SentenceTransformer, chunks: pl.DataFrame, queries: Sequence[str], depth: int, batch_size: int = 64
) -> list[list[str]]:
    """For each query, the documents of its nearest chunks, best first, without repeats, at most `depth`.

    Args:
        chunks: columns `doc_id, text`.
    """
    rankings = dense_rankings(model, chunks, queries, chunks.height, batch_size)
    return to_documents(rankings, chunks["doc_id"].to_list(), depth)


def document_metrics(
    rankings: Sequence[Sequence[str]], relevant: Sequence[str], k_values: Sequence[int]
) -> dict[str, float]:
    """recall@k, MRR@10 and nDCG@10 with one relevant document per query.

    Args:
        rankings: per query, document ids best first (distinct).
        relevant: per query, the document it was asked about.

    Returns:
        `{"recall@1": ..., "recall@5": ..., "recall@10": ..., "mrr@10": ..., "ndcg@10": ...}`, 4 decimals.
    """
    if not rankings:
        raise ValueError("no queries to score")
    ranks = [list(r).index(d) + 1 if d in r else None for r, d in zip(rankings, relevant, strict=True)]
    n = len(ranks)
    out = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in sorted(set(k_values))}
    out["mrr@10"] = sum(1 / r for r in ranks if r is not None and r <= 10) / n
    # One relevant document: the ideal DCG is 1, so nDCG is the discounted gain at its rank.
    out["ndcg@10"] = sum(1 / math.log2(r + 1) for r in ranks if r is not None and r <= 10) / n
    return {k: round(v, 4) for k, v in out.items()}


def question_metrics(
    model: SentenceTransformer,
    chunks: pl.DataFrame,
    questions: pl.DataFrame,
    k_values: Sequence[int],
    batch_size: int = 64,
) -> dict[str, float]:
    """`model` over `chunks` answering the held-out `questions` (columns `query`, `doc_id`), per document."""
    rankings = rank_documents(model, chunks, questions["query"].to_list(), max(max(k_values), 10), batch_size)
    return document_metrics(rankings, questions["doc_id"].to_list(), k_values)


@dataclass
class QuestionSet:
    """The held-out questions and the masked held-out documents chunked two ways (ours and the naive recipe)."""

    questions: pl.DataFrame
    chunks: pl.DataFrame
    """The platform's chunking (the one stage `select_chunking` chose) of the masked documents."""
    naive_chunks: pl.DataFrame
    """Fixed character windows (params `evaluate.naive_chunk_chars` / `naive_overlap_chars`)."""
    _lexical: list[list[int]] | None = field(default=None, compare=False)

    @classmethod
    def load(cls, p: Params) -> QuestionSet:
        """Read `eval_questions.parquet` and `eval_documents.parquet` (stage `questions`) and chunk the documents."""
        from core.chunking import chosen_chunking
        from data.chunk import chunk_documents, load_tokenizer

        docs = pl.read_parquet(paths.EVAL_DOCUMENTS)
        ev = p.evaluate
        chunks = chunk_documents(docs, load_tokenizer(), chosen_chunking(p))
        return cls(
            questions=pl.read_parquet(paths.EVAL_QUESTIONS),
            chunks=chunks.select("chunk_id", "doc_id", "text"),
            naive_chunks=naive_chunks(docs, ev.naive_chunk_chars, ev.naive_overlap_chars),
        )

    def score(self, model: SentenceTransformer, p: Params, naive: bool = False) -> dict[str, float]:
        """`model` answering the questions over our chunks (or the naive recipe's)."""
        chunks = self.naive_chunks if naive else self.chunks
        return question_metrics(model, chunks, self.questions, p.evaluate.k_values, p.evaluate.batch_size)

    def lexical(self, p: Params) -> list[list[int]]:
        """BM25 rankings of our chunks for every question (the model plays no part, so computed once)."""
        if self._lexical is None:
            index = LexicalIndex.build(
                self.chunks["chunk_id"].to_list(), self.chunks["text"].to_list(), p.retrieval.stemmer
            )
            self._lexical = lexical_rankings(index, self.questions["query"].to_list(), self.chunks.height)
        return self._lexical

    def mode_rankings(self, model: SentenceTransformer, p: Params) -> dict[str, list[list[int]]]:
        """Chunk rankings for every question in every mode: `dense` (`model`), `lexical` (BM25), `hybrid` (fused)."""
        return self.scored_rankings(model, p)[0]

    def scored_rankings(
        self, model: SentenceTransformer, p: Params
    ) -> tuple[dict[str, list[list[int]]], list[list[float]]]:
        """`mode_rankings` and the dense ranking's cosine similarities (its first `retrieval.candidates`)."""
        queries = self.questions["query"].to_list()
        dense, sims = dense_scored(model, self.chunks, queries, self.chunks.height, p.evaluate.batch_size)
        rankings = {
            "dense": dense,
            "lexical": self.lexical(p),
            "hybrid": hybrid_rankings(dense, self.lexical(p), p.retrieval),
        }
        return rankings, [s[: p.retrieval.candidates] for s in sims]

    def scored_documents(self, rankings: list[list[int]], scores: list[list[float]]) -> list[list[tuple[str, float]]]:
        """Per question, `(document, score)` of the scored head of its ranking (see evaluation/abstention.py)."""
        doc_of = self.chunks["doc_id"].to_list()
        return [[(doc_of[j], s) for j, s in zip(r, sc, strict=False)] for r, sc in zip(rankings, scores, strict=True)]

    def metrics(self, rankings: list[list[int]], p: Params) -> dict[str, float]:
        """Chunk rankings judged per document (see `document_metrics`)."""
        depth = max(max(p.evaluate.k_values), 10)
        docs = to_documents(rankings, self.chunks["doc_id"].to_list(), depth)
        return document_metrics(docs, self.questions["doc_id"].to_list(), p.evaluate.k_values)

    def score_modes(self, model: SentenceTransformer, p: Params) -> dict[str, dict[str, float]]:
        """Every retrieval mode's metrics with `model` (see `mode_rankings`)."""
        return {mode: self.metrics(r, p) for mode, r in self.mode_rankings(model, p).items()}

    def rerank(
        self, reranker: CrossEncoder, rankings: list[list[int]], p: Params
    ) -> tuple[list[list[int]], list[list[float]], float]:
        """`rankings` with their first `retrieval.rerank_candidates` rows reordered by `reranker`.

        Returns:
            The new rankings, the reranked heads' scores, and the reranker's milliseconds per question.
        """
        return rerank_rankings(
            reranker,
            self.questions["query"].to_list(),
            self.chunks["text"].to_list(),
            rankings,
            p.retrieval.rerank_candidates,
            p.evaluate.batch_size,
        )
