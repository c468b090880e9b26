"""/v1/rag, and `model: "rag"` on /v1/chat/completions: cited answers from the served retrieval, or an
abstention when nothing relevant was found.

Both routes share `RagAnswer`: it starts the run and turns the engine's output into the answer text with
only valid citations (core/citations.py, applied to the stream as it goes) plus which sources were cited.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from core.citations import clean
from core.retrieval_params import Mode
from core.tool_calls import Call
from serving.engines.rag import NOTHING_FOUND, RagRun
from serving.engines.types import SamplingParams, TokenLogprob
from serving.handlers.base import RAG, EventStream, RequestRecord
from serving.platform import Platform
from serving.schemas import RagRequest, RagResponse, RagSource, SamplingLimits, usage


@dataclass
class AnswerPiece:
    """A piece of a RAG answer's text; the last one carries the finish reason, token counts and citations."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    citations: list[int] | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    """The plain chat model's tokens in this piece, when logprobs were asked."""
    stop_sequence: str | None = None
    """On the last piece of a plain chat answer: the stop string that ended it, if one did."""
    calls: tuple[Call, ...] = ()
    """Tool calls an upstream model made, already structured (ours write them as text: core/tool_calls.py)."""


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    citations: list[int]


class RagAnswer:
    """One started RAG answer, read whole (`result`) or as pieces (`stream`)."""

    def __init__(self, run: RagRun, record: RequestRecord) -> None:
        self.run = run
        self.record = record
        self.sources = [RagSource.of(s) for s in run.sources]
        self.prompt_tokens = run.generation.prompt_tokens if run.generation else 0
        record.prompt_tokens = self.prompt_tokens
        record.hits = len(run.sources)

    @property
    def abstained(self) -> bool:
        return self.run.abstained

    def cancel(self) -> None:
        if self.run.generation is not None:
            self.run.generation.cancel()

    def _finish(self, reason: str, completion_tokens: int, citations: list[int]) -> None:
        rec = self.record
        rec.finish_reason, rec.completion_tokens = ("abstained" if self.abstained else reason), completion_tokens
        rec.queue_ms = self.run.generation.queue_ms if self.run.generation else None

    async def result(self) -> Answer:
        handle = self.run.generation
        if handle is None:
            self._finish("stop", 0, [])
            return Answer(NOTHING_FOUND, "stop", 0, 0, [])
        done = await handle.result()
        text, cited = clean(done.text, len(self.run.sources))
        self._finish(done.finish_reason, done.completion_tokens, cited)
        return Answer(text, done.finish_reason, done.prompt_tokens, done.completion_tokens, cited)

    async def stream(self) -> AsyncIterator[AnswerPiece]:
        handle = self.run.generation
        if handle is None:
            self._finish("stop", 0, [])
            yield AnswerPiece(NOTHING_FOUND)
            yield AnswerPiece("", "stop", 0, 0, [])
            return
        citations = self.run.citations()
        async for d in handle.stream():
            text = citations.feed(d.text) if d.text else ""
            if d.finish_reason is None:
                if text:
                    yield AnswerPiece(text)
                continue
            text += citations.flush()
            if text:
                yield AnswerPiece(text)
            self._finish(d.finish_reason, d.completion_tokens, citations.cited)
            yield AnswerPiece("", d.finish_reason, d.prompt_tokens, d.completion_tokens, citations.cited)


class RagHandler:
    def __init__(self, platform: Platform, limits: SamplingLimits) -> None:
        self.platform = platform
        self.limits = limits

    async def start(
        self,
        question: str,
        params: SamplingParams,
        record: RequestRecord,
        top_k: int | None,
        where: dict[str, Any] | None,
        mode: Mode | None,
        min_score: float | None = None,
        rerank: bool | None = None,
    ) -> RagAnswer:
        """Retrieve and queue the answer (or abstain).

        Raises:
            InvalidRequest / ContextLengthExceeded / QueueFull: see the retriever and the chat engine.
        """
        mode = mode or self.platform.retriever.default_mode
        run = await self.platform.rag.start(question, params, top_k, where, mode, min_score, rerank)
        record.model, record.version, record.mode = RAG, self.platform.chat_info.version, mode
        record.timed(run.timings)
        return RagAnswer(run, record)

    async def answer(self, req: RagRequest, record: RequestRecord) -> RagResponse | EventStream:
        """The answer with its numbered sources and citations; streamed: sources first, then the text.

        Raises:
            InvalidRequest / ContextLengthExceeded / QueueFull: see `to_sampling`, the retriever and the engine.
        """
        answer = await self.start(
            req.question,
            req.to_sampling(self.limits),
            record,
            req.top_k,
            req.filter,
            req.mode,
            req.min_score,
            req.rerank,
        )
        if req.stream:
            return EventStream(self._events(answer), answer.cancel)
        done = await answer.result()
        return RagResponse(
            answer=done.text,
            sources=answer.sources,
            citations=done.citations,
            abstained=answer.abstained,
            usage=usage(done.prompt_tokens, done.completion_tokens),
            finish_reason=done.finish_reason,  # type: ignore[arg-type]
            model=RAG,
        )

    async def _events(self, answer: RagAnswer) -> AsyncIterator[dict[str, Any]]:
        """`{"sources": [...]}`, `{"delta": "..."}`s, then `{"finish_reason", "usage", "citations", "abstained"}`."""
        yield {"sources": [s.model_dump() for s in answer.sources]}
        async for piece in answer.stream():
            if piece.text:
                yield {"delta": piece.text}
            if piece.finish_reason is not None:
                yield {
                    "finish_reason": piece.finish_reason,
                    "usage": usage(piece.prompt_tokens, piece.completion_tokens).model_dump(),
                    "citations": piece.citations or [],
                    "abstained": answer.abstained,
                }
