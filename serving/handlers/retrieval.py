"""/v1/search, /v1/rerank and /v1/rag: the served retrieval configuration (dense, lexical or hybrid, reranked
when it passed the gate), the reranker on its own, and answers grounded in what search finds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from core.errors import ModelNotFound
from serving.engines.chat import GenerationHandle
from serving.handlers.base import EMBEDDER, RAG, RERANKER, EventStream, RequestRecord
from serving.platform import Platform
from serving.schemas import (
    RagRequest,
    RagResponse,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    SamplingLimits,
    SearchRequest,
    SearchResponse,
    SearchResult,
    new_id,
    usage,
)


class RetrievalHandler:
    def __init__(self, platform: Platform, limits: SamplingLimits) -> None:
        self.platform = platform
        self.limits = limits

    async def search(self, req: SearchRequest, record: RequestRecord) -> SearchResponse:
        """The `top_k` nearest chunks, best first.

        Raises:
            InvalidRequest: top_k out of range, an over-long query, or a filter the index rejects.
        """
        retriever = self.platform.retriever
        mode = req.mode or retriever.default_mode
        reranked = req.rerank if req.rerank is not None else retriever.reranker is not None
        hits = await retriever.search(req.query, req.top_k, req.filter, mode, reranked)
        record.version, record.top_k, record.hits = self.platform.embedder_info.version, req.top_k, len(hits)
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

    async def rag(self, req: RagRequest, record: RequestRecord) -> RagResponse | EventStream:
        """Retrieve, then answer from the passages; the sources come with the answer (first, when streamed).

        Raises:
            InvalidRequest / ContextLengthExceeded / QueueFull: see `to_sampling`, the retriever and the engine.
        """
        mode = req.mode or self.platform.retriever.default_mode
        run = await self.platform.rag.start(req.question, req.to_sampling(self.limits), req.top_k, req.filter, mode)
        record.model, record.version, record.mode = RAG, self.platform.chat_info.version, mode
        record.prompt_tokens = run.generation.prompt_tokens
        sources = [SearchResult.of(h) for h in run.sources]
        if req.stream:
            return EventStream(self._events(run.generation, sources, record), run.generation.cancel)
        result = await run.generation.result()
        record.completion_tokens, record.finish_reason = result.completion_tokens, result.finish_reason
        record.queue_ms = run.generation.queue_ms
        return RagResponse(
            answer=result.text,
            sources=sources,
            usage=usage(result.prompt_tokens, result.completion_tokens),
            finish_reason=result.finish_reason,
            model=RAG,
        )

    async def _events(
        self, handle: GenerationHandle, sources: list[SearchResult], record: RequestRecord
    ) -> AsyncIterator[dict[str, Any]]:
        """`{"sources": [...]}`, then `{"delta": "..."}`s, then `{"finish_reason", "usage"}`."""
        yield {"sources": [s.model_dump() for s in sources]}
        async for d in handle.stream():
            if d.text:
                yield {"delta": d.text}
            if d.finish_reason is not None:
                record.completion_tokens, record.finish_reason = d.completion_tokens, d.finish_reason
                record.queue_ms = handle.queue_ms
                yield {
                    "finish_reason": d.finish_reason,
                    "usage": usage(d.prompt_tokens, d.completion_tokens).model_dump(),
                }
