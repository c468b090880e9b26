"""Retriever: embed the query with the served embedder, query the active Chroma collection."""

from __future__ import annotations

import asyncio
from typing import Any

from chromadb.api.models.Collection import Collection
from chromadb.errors import InvalidArgumentError

from core.errors import InvalidRequest
from serving.engines.embedder import EmbedderEngine
from serving.engines.types import SearchHit


class Retriever:
    def __init__(self, embedder: EmbedderEngine, collection: Collection, *, max_top_k: int = 50) -> None:
        self.embedder = embedder
        self.collection = collection
        self.max_top_k = max_top_k

    async def search(self, query: str, top_k: int, where: dict[str, Any] | None = None) -> list[SearchHit]:
        """The `top_k` chunks closest to `query`, best first.

        Args:
            query: the text to search for.
            top_k: how many chunks (1..max_top_k).
            where: a Chroma metadata filter, e.g. `{"source": "library/json.md"}` or `{"$and": [...]}`.

        Raises:
            InvalidRequest: top_k out of range, a query over the embedder's window, or a filter Chroma rejects.
        """
        if not 1 <= top_k <= self.max_top_k:
            raise InvalidRequest(f"top_k must be between 1 and {self.max_top_k} (got {top_k})", param="top_k")
        self.embedder.check([query])
        vector = (await self.embedder.embed([query]))[0]
        try:
            res = await asyncio.to_thread(
                self.collection.query,
                query_embeddings=[vector.tolist()],
                n_results=top_k,
                where=where or None,
                include=["documents", "metadatas", "distances"],
            )
        except (ValueError, TypeError, InvalidArgumentError) as e:  # how chromadb 1.5 rejects a bad `where`
            raise InvalidRequest(f"invalid filter: {e}", param="filter") from None
        ids, docs = res["ids"][0], (res["documents"] or [[]])[0]
        metas, dists = (res["metadatas"] or [[]])[0], (res["distances"] or [[]])[0]
        return [
            SearchHit(
                id=i,
                text=d or "",
                score=1.0 - float(dist),  # the index is built with cosine space: distance = 1 - cosine
                source=str(m.get("source")) if m and m.get("source") is not None else None,
                metadata=dict(m or {}),
            )
            for i, d, m, dist in zip(ids, docs, metas, dists, strict=True)
        ]
