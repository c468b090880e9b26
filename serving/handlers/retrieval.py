"""/v1/search and /v1/rag: the served retrieval configuration (dense, lexical or hybrid), and answers grounded in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from serving.engines.chat import GenerationHandle
from serving.handlers.base import EMBEDDER, RAG, EventStream, RequestRecord
from serving.platform import Platform
from serving.schemas import RagRequest, RagResponse, SamplingLimits, SearchRequest, SearchResponse, SearchResult, usage


class RetrievalHandler:
    def __init__(self, platform: Platform, limits: SamplingLimits) -> None:
        self.platform = platform
        self.limits = limits

    async def search(self, req: SearchRequest, record: RequestRecord) -> SearchResponse:
        """The `top_k` nearest chunks, best first.

        Raises:
            InvalidRequest: top_k out of range, an over-long query, or a filter the index rejects.
        """
        mode = req.mode or self.platform.retriever.default_mode
        hits = await self.platform.retriever.search(req.query, req.top_k, req.filter, mode)
        record.version, record.top_k, record.hits = self.platform.embedder_info.version, req.top_k, len(hits)
        record.mode = mode
        return SearchResponse(results=[SearchResult.of(h) for h in hits], model=EMBEDDER, mode=mode)

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
