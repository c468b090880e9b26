"""/v1/chat/completions: the champion chat model, or `model: "rag"` (retrieve, then a cited answer).

`n > 1` submits `n` generations of the same prompt at once: admitted together they share one prefill
(serving/engines/generation/forward.py) and then decode as separate rows, each with its own sampler (with a
`seed`, choice i draws with seed + i, so the choices differ and each is reproducible). Streamed, their chunks
interleave, each carrying its choice's `index`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from core.errors import InvalidRequest, ModelNotFound
from core.tool_calls import Call, ToolChoice, parse
from serving.engines.chat import ChatEngine, GenerationHandle
from serving.engines.types import SamplingParams, TokenLogprob
from serving.handlers.base import CHAT, RAG, EventStream, RequestRecord
from serving.handlers.rag import AnswerPiece, RagAnswer, RagHandler
from serving.handlers.tools import ToolCallReader, openai_delta
from serving.handlers.upstream import Upstreams
from serving.platform import Platform
from serving.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkWithUsage,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    SamplingLimits,
    new_id,
    usage,
)
from serving.schemas.tools import ToolCall


@dataclass
class Started:
    """Generations under way for one request: one stream of pieces per choice, and how to stop them all."""

    streams: list[AsyncIterator[AnswerPiece]]
    cancel: Callable[[], None]
    choice: ToolChoice
    """The tool choice in effect (`none` when no tools were offered)."""
    answer: RagAnswer | None = None
    """`model: "rag"`: the retrieval behind the answer (sources, abstention)."""

    async def collect(self) -> list[tuple[str, AnswerPiece, list[TokenLogprob]]]:
        """Every choice whole: its text, its last piece and its tokens' logprobs."""
        try:
            return list(await asyncio.gather(*(collect_answer(s) for s in self.streams)))
        finally:
            self.cancel()  # a no-op for finished generations; frees the others if one failed


class ChatHandler:
    def __init__(
        self, platform: Platform, limits: SamplingLimits, log_text: bool, rag: RagHandler, upstreams: Upstreams
    ) -> None:
        self.platform = platform
        self.limits = limits
        self.log_text = log_text
        self.rag = rag
        self.upstreams = upstreams
        """Hosted models served under their own names (serving/handlers/upstream.py)."""

    async def start(self, req: ChatCompletionRequest, record: RequestRecord) -> Started:
        """Queue the generation(s) a request asks for: the dialect-free half of a chat request (the Anthropic
        Messages route converts its request and calls this too).

        Raises:
            ModelNotFound: `model` is neither `chat`, `rag` nor an upstream's name.
            InvalidRequest / ContextLengthExceeded / QueueFull: see the schema's `to_sampling` and the engines.
            UpstreamRejected / UpstreamUnavailable: an upstream model's refusal or failure.
        """
        upstream = self.upstreams.get(req.model)
        if upstream is not None:  # its own limits and checks apply; its calls arrive structured (choice `none`)
            streams, cancel = await upstream.start(req, record)
            return Started(streams, cancel, "none")
        params = req.to_sampling(self.limits)
        choice = req.tool_choice_in_effect() if req.tools else "none"
        if req.model == RAG:
            question = self._rag_question(req)
            answer = await self.rag.start(
                question, params, record, req.top_k, req.filter, req.mode, req.min_score, req.rerank
            )
            started = Started([answer.stream()], answer.cancel, choice, answer)
        elif req.model == CHAT:
            prompt = self.platform.chat.encode_messages(req.template_messages(), req.template_tools())
            handles = submit_n(self.platform.chat, prompt, params, req.n)
            record.model, record.version, record.prompt_tokens = CHAT, self.platform.chat_info.version, len(prompt)
            started = Started([chat_pieces(h, record) for h in handles], cancel_all(handles), choice)
        else:
            raise ModelNotFound(
                f"model `{req.model}` does not exist; use {', '.join(f'`{m}`' for m in self.model_names())} "
                "(see /v1/models)",
                param="model",
            )
        if self.log_text:
            record.prompt = req.template_messages()[-1]["content"]
        return started

    async def completions(self, req: ChatCompletionRequest, record: RequestRecord) -> ChatCompletion | EventStream:
        """Queue the generation(s); the whole completion, or its chunks when `stream` is set (see `start`)."""
        started = await self.start(req, record)
        streams, cancel, choice, answer = started.streams, started.cancel, started.choice, started.answer
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = self._chunks(req.model, streams, answer, include_usage, choice, req.logprobs)
            return EventStream(chunks, cancel)
        results = await started.collect()
        if self.log_text:
            record.answer = results[0][0]
        choices = [_choice(i, text, last, lps, choice, req.logprobs) for i, (text, last, lps) in enumerate(results)]
        last = results[0][1]
        out = ChatCompletion(
            id=new_id("chatcmpl"),
            created=int(time.time()),
            model=req.model,
            choices=choices,
            usage=usage(last.prompt_tokens, sum(r[1].completion_tokens for r in results)),
        )
        if answer is not None:
            out.sources, out.citations, out.abstained = answer.sources, last.citations or [], answer.abstained
        return out

    def model_names(self) -> list[str]:
        """What `model` may name here."""
        return [CHAT, RAG, *self.upstreams]

    def is_upstream(self, model: str) -> bool:
        return model in self.upstreams

    @staticmethod
    def _rag_question(req: ChatCompletionRequest) -> str:
        if req.tools:
            raise InvalidRequest("model `rag` answers from its sources and takes no tools", param="tools")
        if req.n != 1:
            raise InvalidRequest("model `rag` returns one answer per request (n must be 1)", param="n")
        question = req.last_user_text()
        if not question:
            raise InvalidRequest("model `rag` needs a user message holding the question", param="messages")
        return question

    async def _chunks(
        self,
        model: str,
        streams: list[AsyncIterator[AnswerPiece]],
        answer: RagAnswer | None,
        include_usage: bool,
        choice: ToolChoice,
        logprobs: bool,
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid, created = new_id("chatcmpl"), int(time.time())
        # asked for usage: `usage: null` on every chunk but the last (OpenAI's shape); else no `usage` key at all
        kind = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk
        readers = [ToolCallReader(choice) for _ in streams]
        completion_tokens = [0] * len(streams)
        prompt_tokens = 0

        def chunk(
            index: int, delta: Delta, finish: str | None = None, lps: ChoiceLogprobs | None = None
        ) -> ChatCompletionChunk:
            one = ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=lps)  # type: ignore[arg-type]
            return kind(id=cid, created=created, model=model, choices=[one])

        for i in range(len(streams)):
            first = chunk(i, Delta(role="assistant", content=""))
            if answer is not None:
                first.sources = answer.sources
            yield first
        async for i, piece in merged_pieces(streams):
            reader = readers[i]
            content, events = reader.push(piece.text)
            events += reader.add(piece.calls)
            if piece.finish_reason is not None:
                rest, more = reader.finish()
                content, events = content + rest, events + more
            lps = ChoiceLogprobs.of(piece.logprobs) if logprobs and piece.logprobs else None
            if content or lps:
                yield chunk(i, Delta(content=content), lps=lps)
            for event in events:
                delta = openai_delta(event)
                if delta is not None:
                    yield chunk(i, Delta(tool_calls=[delta]))
            if piece.finish_reason is None:
                continue
            finish = "tool_calls" if reader.calls and piece.finish_reason == "stop" else piece.finish_reason
            last = chunk(i, Delta(), finish)
            if answer is not None:
                last.citations, last.abstained = piece.citations or [], answer.abstained
            yield last
            prompt_tokens, completion_tokens[i] = piece.prompt_tokens, piece.completion_tokens
        if include_usage:  # OpenAI: the usage chunk has empty choices and comes before [DONE]
            yield ChatCompletionChunk(
                id=cid, created=created, model=model, choices=[], usage=usage(prompt_tokens, sum(completion_tokens))
            )


def _choice(
    index: int, text: str, last: AnswerPiece, tokens: list[TokenLogprob], choice: ToolChoice, logprobs: bool
) -> Choice:
    """One whole answer as a choice: its calls when it made any (`finish_reason: "tool_calls"`), else its text."""
    message, finish = AssistantMessage(content=text), last.finish_reason
    content, calls = parse(text) if choice != "none" else (text, [])
    calls += last.calls  # an upstream model's, structured
    if calls:
        message = AssistantMessage(content=content or None, tool_calls=[ToolCall.of(c) for c in calls])
        finish = "tool_calls" if finish == "stop" else finish
    lps = ChoiceLogprobs.of(tokens) if logprobs else None
    return Choice(index=index, message=message, finish_reason=finish, logprobs=lps)  # type: ignore[arg-type]


async def collect_answer(pieces: AsyncIterator[AnswerPiece]) -> tuple[str, AnswerPiece, list[TokenLogprob]]:
    """A whole answer: its text, its last piece (finish reason, counts, citations, and every structured call)
    and its tokens' logprobs."""
    text, last = "", AnswerPiece("")
    tokens: list[TokenLogprob] = []
    calls: list[Call] = []
    async for piece in pieces:
        text += piece.text
        tokens += piece.logprobs
        calls += piece.calls
        last = piece
    return text, dataclasses.replace(last, calls=tuple(calls)), tokens


async def merged_pieces(streams: list[AsyncIterator[AnswerPiece]]) -> AsyncIterator[tuple[int, AnswerPiece]]:
    """The pieces of every stream as they come, tagged with the stream's index; an error in one is raised."""
    if len(streams) == 1:
        async for piece in streams[0]:
            yield 0, piece
        return
    queue: asyncio.Queue[tuple[int, AnswerPiece | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[AnswerPiece]) -> None:
        try:
            async for piece in stream:
                await queue.put((i, piece))
            await queue.put((i, None))
        except Exception as e:  # handed to the consumer, which raises it
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            i, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def submit_n(engine: ChatEngine, prompt: list[int], params: SamplingParams, n: int) -> list[GenerationHandle]:
    """`n` generations of `prompt` (choice i seeded with seed + i); all queued, or none (the error is raised)."""
    handles: list[GenerationHandle] = []
    try:
        for i in range(n):
            seeded = params if params.seed is None or i == 0 else dataclasses.replace(params, seed=params.seed + i)
            handles.append(engine.submit(prompt, seeded))
    except BaseException:
        cancel_all(handles)()
        raise
    return handles


def cancel_all(handles: list[GenerationHandle]) -> Callable[[], None]:
    def cancel() -> None:
        for h in handles:
            h.cancel()

    return cancel


async def chat_pieces(handle: GenerationHandle, record: RequestRecord) -> AsyncIterator[AnswerPiece]:
    """The plain chat model's deltas as answer pieces; records the outcome on the last (tokens summed over n)."""
    async for d in handle.stream():
        if d.finish_reason is None:
            if d.text or d.logprobs:
                yield AnswerPiece(d.text, logprobs=d.logprobs)
            continue
        record.completion_tokens = (record.completion_tokens or 0) + d.completion_tokens
        record.finish_reason, record.queue_ms = d.finish_reason, handle.queue_ms
        yield AnswerPiece(
            d.text or "", d.finish_reason, d.prompt_tokens, d.completion_tokens, logprobs=d.logprobs,
            stop_sequence=d.stop_sequence,
        )  # fmt: skip
