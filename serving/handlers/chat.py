"""/v1/chat/completions: the champion chat model, or `model: "rag"` (retrieve, then a cited answer)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from core.errors import InvalidRequest, ModelNotFound
from serving.engines.chat import GenerationHandle
from serving.handlers.base import CHAT, RAG, EventStream, RequestRecord
from serving.handlers.rag import AnswerPiece, RagAnswer, RagHandler
from serving.platform import Platform
from serving.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    SamplingLimits,
    new_id,
    usage,
)


class ChatHandler:
    def __init__(self, platform: Platform, limits: SamplingLimits, log_text: bool, rag: RagHandler) -> None:
        self.platform = platform
        self.limits = limits
        self.log_text = log_text
        self.rag = rag

    async def completions(self, req: ChatCompletionRequest, record: RequestRecord) -> ChatCompletion | EventStream:
        """Queue the generation; the whole completion, or its chunks when `stream` is set.

        Raises:
            ModelNotFound: `model` is neither `chat` nor `rag`.
            InvalidRequest / ContextLengthExceeded / QueueFull: see the schema's `to_sampling` and the engines.
        """
        params = req.to_sampling(self.limits)
        if req.model == RAG:
            question = req.last_user_text()
            if not question:
                raise InvalidRequest("model `rag` needs a user message holding the question", param="messages")
            answer = await self.rag.start(
                question, params, record, req.top_k, req.filter, req.mode, req.min_score, req.rerank
            )
            pieces, cancel = answer.stream(), answer.cancel
        elif req.model == CHAT:
            handle = self.platform.chat.submit(self.platform.chat.encode_messages(req.template_messages()), params)
            record.model, record.version, record.prompt_tokens = (
                CHAT,
                self.platform.chat_info.version,
                handle.prompt_tokens,
            )
            answer, pieces, cancel = None, _pieces(handle, record), handle.cancel
        else:
            raise ModelNotFound(
                f"model `{req.model}` does not exist; use `chat` or `rag` (see /v1/models)", param="model"
            )
        if self.log_text:
            record.prompt = req.template_messages()[-1]["content"]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(self._chunks(req.model, pieces, answer, include_usage), cancel)
        text, last = "", AnswerPiece("")
        async for piece in pieces:
            text += piece.text
            last = piece
        if self.log_text:
            record.answer = text
        out = ChatCompletion(
            id=new_id("chatcmpl"),
            created=int(time.time()),
            model=req.model,
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=last.finish_reason)],  # type: ignore[arg-type]
            usage=usage(last.prompt_tokens, last.completion_tokens),
        )
        if answer is not None:
            out.sources, out.citations, out.abstained = answer.sources, last.citations or [], answer.abstained
        return out

    async def _chunks(
        self, model: str, pieces: AsyncIterator[AnswerPiece], answer: RagAnswer | None, include_usage: bool
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid, created = new_id("chatcmpl"), int(time.time())

        def chunk(delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(delta=delta, finish_reason=finish)  # type: ignore[arg-type]
            return ChatCompletionChunk(id=cid, created=created, model=model, choices=[choice])

        first = chunk(Delta(role="assistant", content=""))
        if answer is not None:
            first.sources = answer.sources
        yield first
        async for piece in pieces:
            if piece.text:
                yield chunk(Delta(content=piece.text))
            if piece.finish_reason is None:
                continue
            last = chunk(Delta(), piece.finish_reason)
            if answer is not None:
                last.citations, last.abstained = piece.citations or [], answer.abstained
            yield last
            if include_usage:  # OpenAI: the usage chunk has empty choices and comes before [DONE]
                yield ChatCompletionChunk(
                    id=cid,
                    created=created,
                    model=model,
                    choices=[],
                    usage=usage(piece.prompt_tokens, piece.completion_tokens),
                )


async def _pieces(handle: GenerationHandle, record: RequestRecord) -> AsyncIterator[AnswerPiece]:
    """The plain chat model's deltas as answer pieces; records the outcome on the last."""
    async for d in handle.stream():
        if d.finish_reason is None:
            if d.text:
                yield AnswerPiece(d.text)
            continue
        record.completion_tokens, record.finish_reason, record.queue_ms = (
            d.completion_tokens,
            d.finish_reason,
            handle.queue_ms,
        )
        yield AnswerPiece(d.text or "", d.finish_reason, d.prompt_tokens, d.completion_tokens)
