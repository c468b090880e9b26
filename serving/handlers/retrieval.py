"""/v1/search and /v1/rerank: the served retrieval configuration (dense, lexical or hybrid, reranked when it
passed the gate), and the reranker on its own."""

from __future__ import annotations

from core.errors import ModelNotFound
from serving.handlers.base import EMBEDDER, RERANKER, RequestRecord
from serving.platform import Platform
from serving.schemas import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    SearchRequest,
    SearchResponse,
    SearchResult,
    new_id,
)


class RetrievalHandler:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def search(self, req: SearchRequest, record: RequestRecord) -> SearchResponse:
        """The `top_k` nearest chunks, best first.

        Raises:
            InvalidRequest: top_k out of range, an over-long query, or a filter the index rejects.
        """
        retriever = self.platform.retriever
        mode = req.mode or retriever.default_mode
        reranked = req.rerank if req.rerank is not None else retriever.reranker is not None
        found = await retriever.retrieve(req.query, req.top_k, req.filter, mode, reranked)
        hits = found.hits
        record.version, record.top_k, record.hits = self.platform.embedder_info.version, req.top_k, len(hits)
        record.timed(found.timings)
        record.mode = mode + ("+rerank" if reranked else "")
        return SearchResponse(results=[SearchResult.of(h) for h in hits], model=EMBEDDER, mode=mode, reranked=reranked)

    async def rerank(self, req: RerankRequest, record: RequestRecord) -> RerankResponse:
        """The documents scored against the query by the served reranker, best first, `top_n` of them.

        Raises:
            ModelNotFound: no reranker is served, or `model` names another.
            InvalidRequest: no documents, too many, or an empty query.
        """
        engine, info = self.platform.reranker, self.platform.reranker_info
        if engine is None or info is None:
            raise ModelNotFound(
                "no reranker is served: none has passed the gate yet (see artifacts/reports/register.json)",
                param="model",
            )
        if req.model != RERANKER:
            raise ModelNotFound(f"model `{req.model}` does not exist; use `{RERANKER}` (see /v1/models)", param="model")
        docs = req.docs()
        scores = await engine.score(req.query, docs)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[: req.top_n or None]
        record.model, record.version, record.inputs = RERANKER, info.version, len(docs)
        return RerankResponse(
            id=new_id("rerank"),
            model=RERANKER,
            results=[
                RerankResult(
                    index=i,
                    relevance_score=scores[i],
                    document=RerankDocument(text=docs[i]) if req.return_documents else None,
                )
                for i in order
            ],
            usage=RerankUsage(total_tokens=engine.count_tokens(req.query, docs)),
        )
