"""/v1/chat/completions: the champion chat model, or `model: "rag"` (retrieve, then answer)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from core.errors import InvalidRequest, ModelNotFound
from serving.engines.chat import GenerationHandle
from serving.engines.types import SearchHit
from serving.handlers.base import CHAT, RAG, EventStream, RequestRecord
from serving.platform import Platform
from serving.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    SamplingLimits,
    SearchResult,
    new_id,
    usage,
)


class ChatHandler:
    def __init__(self, platform: Platform, limits: SamplingLimits, log_text: bool) -> None:
        self.platform = platform
        self.limits = limits
        self.log_text = log_text

    async def completions(self, req: ChatCompletionRequest, record: RequestRecord) -> ChatCompletion | EventStream:
        """Queue the generation; the whole completion, or its chunks when `stream` is set.

        Raises:
            ModelNotFound: `model` is neither `chat` nor `rag`.
            InvalidRequest / ContextLengthExceeded / QueueFull: see the schema's `to_sampling` and the engines.
        """
        params = req.to_sampling(self.limits)
        sources: list[SearchHit] | None = None
        if req.model == RAG:
            question = req.last_user_text()
            if not question:
                raise InvalidRequest("model `rag` needs a user message holding the question", param="messages")
            run = await self.platform.rag.start(question, params, req.top_k, req.filter, req.mode)
            handle, sources = run.generation, run.sources
        elif req.model == CHAT:
            handle = self.platform.chat.submit(self.platform.chat.encode_messages(req.template_messages()), params)
        else:
            raise ModelNotFound(
                f"model `{req.model}` does not exist; use `chat` or `rag` (see /v1/models)", param="model"
            )
        record.model, record.version = req.model, self.platform.chat_info.version
        record.prompt_tokens = handle.prompt_tokens
        if self.log_text:
            record.prompt = req.template_messages()[-1]["content"]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(self._chunks(req.model, handle, sources, include_usage, record), handle.cancel)
        result = await handle.result()
        record.completion_tokens, record.finish_reason = result.completion_tokens, result.finish_reason
        record.queue_ms = handle.queue_ms
        if self.log_text:
            record.answer = result.text
        return ChatCompletion.of(req.model, result, sources)

    async def _chunks(
        self,
        model: str,
        handle: GenerationHandle,
        sources: list[SearchHit] | None,
        include_usage: bool,
        record: RequestRecord,
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid, created = new_id("chatcmpl"), int(time.time())

        def chunk(delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(delta=delta, finish_reason=finish)  # type: ignore[arg-type]
            return ChatCompletionChunk(id=cid, created=created, model=model, choices=[choice])

        first = chunk(Delta(role="assistant", content=""))
        if sources is not None:
            first.sources = [SearchResult.of(h) for h in sources]
        yield first
        async for d in handle.stream():
            if d.text:
                yield chunk(Delta(content=d.text))
            if d.finish_reason is not None:
                yield chunk(Delta(), d.finish_reason)
                record.completion_tokens, record.finish_reason = d.completion_tokens, d.finish_reason
                record.queue_ms = handle.queue_ms
                if include_usage:  # OpenAI: the usage chunk has empty choices and comes before [DONE]
                    yield ChatCompletionChunk(
                        id=cid,
                        created=created,
                        model=model,
                        choices=[],
                        usage=usage(d.prompt_tokens, d.completion_tokens),
                    )
