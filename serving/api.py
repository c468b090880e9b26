"""Protocol handlers: turn a validated request into one services-layer call and its wire response.

The BentoML routes in `service.py` call exactly one method here each; this module knows the OpenAI
wire format (schemas, SSE) and the engines' plain types, never BentoML and never model internals.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from core.errors import InvalidRequest, ModelNotFound
from serving.engines.chat import GenerationHandle
from serving.engines.types import SearchHit
from serving.http import sse_stream
from serving.platform import Platform
from serving.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    RagRequest,
    RagResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
    new_id,
    usage,
)
from serving.settings import Settings

CHAT, EMBEDDER, RAG = "chat", "embedder", "rag"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OpenAIHandlers:
    def __init__(self, platform: Platform, settings: Settings) -> None:
        self.platform = platform
        self.settings = settings.serving
        self.log_text = settings.serving.log_text

    # ---- /v1/models ----------------------------------------------------------------------------

    def models(self) -> ModelList:
        p, now = self.platform, int(time.time())
        chat_v, emb_v = p.chat_info.version, p.embedder_info.version
        return ModelList(
            data=[
                ModelCard(id=CHAT, created=now, version=chat_v),
                ModelCard(id=EMBEDDER, created=now, version=emb_v),
                ModelCard(id=RAG, created=now, version=f"chat:{chat_v},embedder:{emb_v}"),
            ]
        )

    # ---- /v1/chat/completions ------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest, log: dict[str, Any]) -> BaseModel | StreamingResponse:
        max_tokens = req.requested_max_tokens()
        if max_tokens is not None and max_tokens > self.settings.chat_max_tokens:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}; this server allows at most {self.settings.chat_max_tokens}",
                param="max_tokens",
            )
        params = req.to_sampling(self.settings.chat_default_max_tokens)
        sources: list[SearchHit] | None = None
        if req.model == RAG:
            question = req.last_user_text()
            if not question:
                raise InvalidRequest("model `rag` needs a user message holding the question", param="messages")
            run = await self.platform.rag.start(question, params, req.top_k, req.filter)
            handle, sources = run.generation, run.sources
        elif req.model == CHAT:
            prompt = self.platform.chat.encode_messages(req.template_messages())
            handle = self.platform.chat.submit(prompt, params)
        else:
            raise ModelNotFound(
                f"model `{req.model}` does not exist; use `chat` or `rag` (see /v1/models)", param="model"
            )
        log.update(model=req.model, version=self.platform.chat_info.version, prompt_tokens=handle.prompt_tokens)
        if self.log_text:
            log.update(prompt=req.template_messages()[-1]["content"])
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = self._chat_chunks(req.model, handle, sources, include_usage, log)
            return _streaming(events, handle)
        result = await handle.result()
        log.update(
            completion_tokens=result.completion_tokens, finish_reason=result.finish_reason, queue_ms=handle.queue_ms
        )
        if self.log_text:
            log.update(answer=result.text)
        return ChatCompletion.of(req.model, result, sources)

    async def _chat_chunks(
        self,
        model: str,
        handle: GenerationHandle,
        sources: list[SearchHit] | None,
        include_usage: bool,
        log: dict[str, Any],
    ) -> AsyncIterator[BaseModel]:
        cid, created = new_id("chatcmpl"), int(time.time())

        def chunk(delta: Delta, finish: Any = None, **extra: Any) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=cid, created=created, model=model, choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra
            )

        first = chunk(Delta(role="assistant", content=""))
        if sources is not None:
            first.sources = [SearchResult.of(h) for h in sources]
        yield first
        async for d in handle.stream():
            if d.text:
                yield chunk(Delta(content=d.text))
            if d.finish_reason is not None:
                yield chunk(Delta(), d.finish_reason)
                log.update(
                    completion_tokens=d.completion_tokens, finish_reason=d.finish_reason, queue_ms=handle.queue_ms
                )
                if include_usage:  # OpenAI: the usage chunk has empty choices and comes before [DONE]
                    yield ChatCompletionChunk(
                        id=cid,
                        created=created,
                        model=model,
                        choices=[],
                        usage=usage(d.prompt_tokens, d.completion_tokens),
                    )

    # ---- /v1/embeddings ------------------------------------------------------------------------

    async def embeddings(self, req: EmbeddingRequest, log: dict[str, Any]) -> EmbeddingResponse:
        if req.model != EMBEDDER:
            raise ModelNotFound(f"model `{req.model}` does not exist; use `embedder` (see /v1/models)", param="model")
        engine = self.platform.embedder
        if req.dimensions is not None and req.dimensions != engine.dimension:
            raise InvalidRequest(
                f"dimensions must be {engine.dimension} for this embedder (it cannot shorten its vectors)",
                param="dimensions",
            )
        texts = req.texts()
        counts = engine.check(texts)
        vectors = await engine.embed(texts)
        log.update(model=EMBEDDER, version=self.platform.embedder_info.version, inputs=len(texts), tokens=sum(counts))
        return EmbeddingResponse.of(EMBEDDER, vectors, req.encoding_format, sum(counts))

    # ---- /v1/search and /v1/rag ------------------------------------------------------------------

    async def search(self, req: SearchRequest, log: dict[str, Any]) -> SearchResponse:
        hits = await self.platform.retriever.search(req.query, req.top_k, req.filter)
        log.update(version=self.platform.embedder_info.version, top_k=req.top_k, hits=len(hits))
        return SearchResponse(results=[SearchResult.of(h) for h in hits], model=EMBEDDER)

    async def rag(self, req: RagRequest, log: dict[str, Any]) -> BaseModel | StreamingResponse:
        if req.max_tokens is not None and req.max_tokens > self.settings.chat_max_tokens:
            raise InvalidRequest(
                f"max_tokens is {req.max_tokens}; this server allows at most {self.settings.chat_max_tokens}",
                param="max_tokens",
            )
        run = await self.platform.rag.start(
            req.question, req.to_sampling(self.settings.chat_default_max_tokens), req.top_k, req.filter
        )
        log.update(model=RAG, version=self.platform.chat_info.version, prompt_tokens=run.generation.prompt_tokens)
        sources = [SearchResult.of(h) for h in run.sources]
        if req.stream:
            return _streaming(self._rag_events(run.generation, sources, log), run.generation)
        result = await run.generation.result()
        log.update(completion_tokens=result.completion_tokens, queue_ms=run.generation.queue_ms)
        return RagResponse(
            answer=result.text,
            sources=sources,
            usage=usage(result.prompt_tokens, result.completion_tokens),
            finish_reason=result.finish_reason,
            model=RAG,
        )

    async def _rag_events(
        self, handle: GenerationHandle, sources: list[SearchResult], log: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """/v1/rag stream: `{"sources": [...]}`, then `{"delta": "..."}`s, then `{"finish_reason", "usage"}`."""
        yield {"sources": [s.model_dump() for s in sources]}
        async for d in handle.stream():
            if d.text:
                yield {"delta": d.text}
            if d.finish_reason is not None:
                log.update(completion_tokens=d.completion_tokens, queue_ms=handle.queue_ms)
                yield {
                    "finish_reason": d.finish_reason,
                    "usage": usage(d.prompt_tokens, d.completion_tokens).model_dump(),
                }


def _streaming(events: AsyncIterator[Any], handle: GenerationHandle) -> StreamingResponse:
    # The background task also runs when the client left before the first chunk (the event generator then
    # never started, so its own cancellation path never ran): the slot is freed either way.
    return StreamingResponse(
        sse_stream(events),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(handle.cancel),
    )


def json_response(model: BaseModel) -> Response:
    # pydantic-core writes the JSON itself: an embeddings answer is hundreds of floats, and the
    # dict + json.dumps route cost ~10% of the event loop's time at 64 clients (py-spy).
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")
