"""Retriever: dense (the served embedder over the active Chroma collection), lexical (BM25) or both fused.

Then, when the registered unit names a reranker (it beat the best mode without one on the held-out
questions), the first `rerank_candidates` results are rescored by it. The modes and their fusion are the
ones the pipeline measured (evaluation/retrieval.py uses the same
`core.lexical` and `core.fusion`); the default mode and the fusion settings come from the registered
`retrieval` unit. Chroma holds the chunks' text and metadata for every mode, and its `where` filter
is applied to lexical search too (as a mask over the BM25 rows), so a filter means the same in each.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from chromadb.api.models.Collection import Collection
from chromadb.errors import InvalidArgumentError

from core.errors import InvalidRequest
from core.fusion import reciprocal_rank_fusion
from core.lexical import LexicalIndex
from core.retrieval_params import Mode
from core.retrieval_unit import RetrievalConfig
from serving.engines.embedder import EmbedderEngine
from serving.engines.reranker import RerankerEngine
from serving.engines.types import SearchHit

# how chromadb 1.5 rejects a bad `where`
_FILTER_ERRORS = (ValueError, TypeError, InvalidArgumentError)


@dataclass(frozen=True)
class Retrieval:
    hits: list[SearchHit]
    best_score: float | None
    """The score abstention is judged on: the reranker's best, else the best dense cosine (None: lexical only)."""
    abstain: bool
    """The registered threshold is on this kind of score and the best one is below it."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage: `retrieve` (embed the query, dense and/or BM25, fusion) and, when reranked, `rerank`."""


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _hit(chunk_id: str, text: str | None, meta: Any, score: float) -> SearchHit:
    m = dict(meta or {})
    source = m.get("source")
    return SearchHit(
        id=chunk_id, text=text or "", score=score, source=None if source is None else str(source), metadata=m
    )


class Retriever:
    def __init__(
        self,
        embedder: EmbedderEngine,
        collection: Collection,
        lexical: LexicalIndex,
        config: RetrievalConfig,
        *,
        reranker: RerankerEngine | None = None,
        max_top_k: int = 50,
    ) -> None:
        self.embedder = embedder
        self.collection = collection
        self.lexical = lexical
        self.config = config
        self.reranker = reranker
        self.max_top_k = max_top_k
        self._row_of = {cid: i for i, cid in enumerate(lexical.ids)}

    @property
    def default_mode(self) -> Mode:
        return self.config.mode

    async def search(
        self,
        query: str,
        top_k: int,
        where: dict[str, Any] | None = None,
        mode: Mode | None = None,
        rerank: bool | None = None,
    ) -> list[SearchHit]:
        """The `top_k` best chunks for `query`, best first (see `retrieve`)."""
        return (await self.retrieve(query, top_k, where, mode, rerank)).hits

    async def retrieve(
        self,
        query: str,
        top_k: int,
        where: dict[str, Any] | None = None,
        mode: Mode | None = None,
        rerank: bool | None = None,
        min_score: float | None = None,
    ) -> Retrieval:
        """The `top_k` best chunks for `query`, best first, and whether to abstain from answering from them:
        when the best score (the reranker's, else dense cosine) is below `min_score`, or, with no `min_score`,
        below the registered threshold if it was measured on that kind of score.

        Args:
            query: the text to search for.
            top_k: how many chunks (1..max_top_k).
            where: a Chroma metadata filter, e.g. `{"source": "library/json.md"}` or `{"$and": [...]}`.
            mode: `dense` (score: cosine similarity), `lexical` (BM25 score) or `hybrid` (fused
                reciprocal-rank score); None takes the registered default.
            rerank: rescore the first `max(top_k, rerank_candidates)` results with the reranker (score: its
                relevance in [0, 1]); None: when the registered unit names a reranker.

        Raises:
            InvalidRequest: top_k out of range, a query over the embedder's window, a filter Chroma rejects,
                or `rerank` asked of a server that serves no reranker.
        """
        if not 1 <= top_k <= self.max_top_k:
            raise InvalidRequest(f"top_k must be between 1 and {self.max_top_k} (got {top_k})", param="top_k")
        if rerank and self.reranker is None:
            raise InvalidRequest("this server serves no reranker (none passed the gate)", param="rerank")
        if rerank is None:
            rerank = self.reranker is not None
        mode = mode or self.config.mode
        if min_score is not None and mode == "lexical" and not rerank:
            raise InvalidRequest(
                "min_score needs a dense, hybrid or reranked search (BM25 has no fixed scale)", param="min_score"
            )
        start = time.perf_counter()
        if not rerank:
            hits, best_dense = await self._first_stage(query, top_k, where, mode)
            timings = {"retrieve": _ms_since(start)}
            return self._judged(hits, best_dense, "dense" if mode != "lexical" else None, min_score, timings)
        assert self.reranker is not None
        hits, _ = await self._first_stage(query, max(top_k, self.config.rerank_candidates), where, mode)
        timings = {"retrieve": _ms_since(start)}
        if not hits:
            return self._judged(hits, None, "reranker", min_score, timings)
        start = time.perf_counter()
        scores = await self.reranker.score(query, [h.text for h in hits])
        timings["rerank"] = _ms_since(start)
        order = sorted(range(len(hits)), key=lambda i: -scores[i])  # stable: ties keep the first stage's order
        reranked = [_hit(hits[i].id, hits[i].text, hits[i].metadata, scores[i]) for i in order[:top_k]]
        return self._judged(reranked, reranked[0].score, "reranker", min_score, timings)

    def _judged(
        self, hits: list[SearchHit], best: float | None, kind: Literal["dense", "reranker"] | None,
        min_score: float | None, timings: dict[str, float],
    ) -> Retrieval:  # fmt: skip
        return Retrieval(hits, best if kind else None, self.config.abstains(best, kind, min_score), timings)

    async def _first_stage(
        self, query: str, top_k: int, where: dict[str, Any] | None, mode: Mode
    ) -> tuple[list[SearchHit], float | None]:
        """The hits, and the best dense cosine among the dense candidates (None in lexical mode or with none)."""
        if mode == "dense":
            hits = await self._dense(query, top_k, where)
            return hits, (hits[0].score if hits else None)
        depth = max(top_k, self.config.candidates)
        dense = await self._dense(query, depth, where) if mode == "hybrid" else []
        best_dense = dense[0].score if dense else None
        lexical = await self._lexical(query, depth, where)
        if mode == "lexical":
            return await self._with_text(lexical[:top_k]), None
        fused = reciprocal_rank_fusion(
            [[h.id for h in dense], [cid for cid, _ in lexical]], self.config.weights(), self.config.rrf_k
        )[:top_k]
        known = {h.id: h for h in dense}
        missing = await self._with_text([(cid, s) for cid, s in fused if cid not in known])
        known.update({h.id: h for h in missing})
        return [_hit(cid, known[cid].text, known[cid].metadata, score) for cid, score in fused], best_dense

    async def _dense(self, query: str, k: int, where: dict[str, Any] | None) -> list[SearchHit]:
        self.embedder.check([query])
        vector = (await self.embedder.embed([query]))[0]
        try:
            res = await asyncio.to_thread(
                self.collection.query,
                query_embeddings=[vector.tolist()],
                n_results=k,
                where=where or None,
                include=["documents", "metadatas", "distances"],
            )
        except _FILTER_ERRORS as e:
            raise InvalidRequest(f"invalid filter: {e}", param="filter") from None
        ids, docs = res["ids"][0], (res["documents"] or [[]])[0]
        metas, dists = (res["metadatas"] or [[]])[0], (res["distances"] or [[]])[0]
        # the index is built with cosine space: distance = 1 - cosine
        return [_hit(i, d, m, 1.0 - float(dist)) for i, d, m, dist in zip(ids, docs, metas, dists, strict=True)]

    async def _lexical(self, query: str, k: int, where: dict[str, Any] | None) -> list[tuple[str, float]]:
        allowed = None
        if where:
            try:
                ids = (await asyncio.to_thread(self.collection.get, where=where, include=[]))["ids"]
            except _FILTER_ERRORS as e:
                raise InvalidRequest(f"invalid filter: {e}", param="filter") from None
            allowed = np.zeros(len(self.lexical), dtype=np.float32)
            allowed[[self._row_of[i] for i in ids if i in self._row_of]] = 1.0
            if not allowed.any():
                return []
        return (await asyncio.to_thread(self.lexical.search, [query], k, allowed))[0]

    async def _with_text(self, scored: list[tuple[str, float]]) -> list[SearchHit]:
        """Chunk ids with scores -> hits with their text and metadata from Chroma, in the given order."""
        if not scored:
            return []
        res = await asyncio.to_thread(
            self.collection.get, ids=[cid for cid, _ in scored], include=["documents", "metadatas"]
        )
        docs, metas = res["documents"] or [], res["metadatas"] or []
        by_id = {i: (d, m) for i, d, m in zip(res["ids"], docs, metas, strict=True)}
        return [_hit(cid, *by_id[cid], score) for cid, score in scored if cid in by_id]
