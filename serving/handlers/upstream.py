"""Hosted models behind our endpoint: a model name in `serving.upstreams` is answered by an OpenAI- or
Anthropic-compatible upstream, through the same routes, limits, metrics and answer shapes as our own models.

Both dialects arrive as one `ChatCompletionRequest`; serving/schemas/upstream.py writes it in the upstream's
dialect, and this module sends it with the upstream's own SDK (`openai` / `anthropic`: their retries, backoff,
timeouts and headers) and reads the upstream's stream back as the `AnswerPiece`s our own models produce, so
the chat and messages handlers shape the reply in either dialect, streamed or whole, without knowing where it
came from. The upstream is always asked to stream, even for a whole reply: one reader serves both, and a
client's disconnect stops the upstream generation.

    OpenAI chunks           text deltas, logprobs -> pieces; tool-call fragments are joined by index and become
                            one structured call when the choice finishes; usage (stream_options) on the last
    Anthropic events        text_delta -> pieces; a tool_use block's input_json_delta fragments become one call at
                            content_block_stop; stop_reason and usage from message_start / message_delta

Errors: an unreachable or failing upstream (connection, timeout, 5xx after the SDK's retries) is a 502 naming
the upstream and its base URL; an upstream's 4xx is passed on with its status and message. The key is given
to the SDK alone: it is in no message, log line or repr (serving/settings.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from core.errors import InvalidRequest, ServingError, UpstreamRejected, UpstreamUnavailable
from core.log import get_logger
from core.serving_params import UpstreamParams
from core.tool_calls import Call
from serving.engines.types import TokenLogprob
from serving.handlers.base import RequestRecord
from serving.handlers.rag import AnswerPiece
from serving.schemas.chat import ChatCompletionRequest
from serving.schemas.upstream import anthropic_payload, openai_payload

log = get_logger(__name__)

STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
API_ERRORS = (openai.APIError, anthropic.APIError)
ANTHROPIC_FINISH = {"max_tokens": "length", "model_context_window_exceeded": "length"}
"""Anthropic's stop reasons that are OpenAI's `length`; every other one (end_turn, stop_sequence, tool_use,
refusal, pause_turn) ends the answer as `stop` (a call turns that into `tool_calls` downstream)."""
_END = object()


class Upstream:
    """One hosted model: where it is, its SDK client, and how a request reaches it."""

    def __init__(self, name: str, params: UpstreamParams, key: str | None, default_max_tokens: int) -> None:
        self.name, self.params, self.default_max_tokens = name, params, default_max_tokens
        # "unset": both SDKs refuse to start without a key; an upstream without auth ignores the header.
        common: dict[str, Any] = {
            "base_url": params.base_url, "api_key": key or "unset", "timeout": params.timeout_s,
            "max_retries": params.max_retries,
        }  # fmt: skip
        self.client: openai.AsyncOpenAI | anthropic.AsyncAnthropic = (
            openai.AsyncOpenAI(**common) if params.dialect == "openai" else anthropic.AsyncAnthropic(**common)
        )

    @property
    def version(self) -> str:
        return f"{self.params.dialect}:{self.params.model}"

    async def start(
        self, req: ChatCompletionRequest, record: RequestRecord
    ) -> tuple[list[AsyncIterator[AnswerPiece]], Callable[[], None]]:
        """Send the request and wait for the upstream to accept it; one stream of pieces per choice, and how
        to stop them.

        Raises:
            InvalidRequest: a field the upstream's dialect cannot carry (serving/schemas/upstream.py).
            UpstreamRejected: the upstream answered 4xx. UpstreamUnavailable: it could not be reached, or failed.
        """
        record.model, record.version = self.name, self.version
        try:
            # Beyond the fields every SDK version names, the body goes as `extra_body`: SDKs drop parameters
            # (anthropic 2.x has no `temperature` argument) that the APIs still take.
            if isinstance(self.client, openai.AsyncOpenAI):
                body = openai_payload(req, self.params.model)
                chunks = await self.client.chat.completions.create(
                    model=body.pop("model"), messages=body.pop("messages"), stream=True,
                    stream_options={"include_usage": True}, extra_body=body,
                )  # fmt: skip
                events = _openai_pieces(chunks, req.n)
            else:
                body = anthropic_payload(req, self.params.model, self.default_max_tokens)
                stream = await self.client.messages.create(
                    model=body.pop("model"), max_tokens=body.pop("max_tokens"), messages=body.pop("messages"),
                    stream=True, extra_body=body,
                )  # fmt: skip
                events = _anthropic_pieces(stream)
        except API_ERRORS as e:
            raise self.error(e) from None
        return Demux(events, req.n, self, record).start()

    async def count_tokens(self, body: dict[str, Any]) -> int:
        """Anthropic upstreams count a Messages request themselves.

        Raises:
            InvalidRequest: an OpenAI upstream (its API counts no tokens ahead). Upstream errors: see `start`.
        """
        if not isinstance(self.client, anthropic.AsyncAnthropic):
            raise InvalidRequest(
                f"`{self.name}` is served by an OpenAI-compatible upstream, which cannot count tokens ahead",
                param="model",
            )
        try:
            messages = body.pop("messages")
            out = await self.client.messages.count_tokens(model=self.params.model, messages=messages, extra_body=body)
        except API_ERRORS as e:
            raise self.error(e) from None
        return out.input_tokens

    def error(self, e: Exception) -> ServingError:
        """An SDK error as ours: a 4xx passed on, anything else a 502 naming the upstream."""
        where = f"upstream `{self.name}` ({self.params.base_url})"
        if isinstance(e, STATUS_ERRORS) and 400 <= e.status_code < 500:
            message, kind, param = _detail(e.body)
            after = e.response.headers.get("retry-after")
            return UpstreamRejected(
                f"{where} refused the request: {message or e.message}",
                status=e.status_code,
                type=kind,
                param=param,
                retry_after_s=int(float(after)) if after and after.replace(".", "", 1).isdigit() else None,
            )
        if isinstance(e, STATUS_ERRORS):
            message, _, _ = _detail(e.body)
            why = f"it answered {e.status_code}: {message or e.message}"
        elif isinstance(e, (openai.APIConnectionError, anthropic.APIConnectionError)):
            why = f"it could not be reached ({type(e).__name__}: {e.message})"
        else:  # an error event mid-stream, or an answer that could not be read
            why = f"its answer failed: {getattr(e, 'message', None) or repr(e)}"
        log.warning("upstream failed name=%s base_url=%s why=%r", self.name, self.params.base_url, why)
        return UpstreamUnavailable(f"{where} is unavailable: {why}")


def _detail(body: object) -> tuple[str | None, str | None, str | None]:
    """(message, type, param) from an error body in either dialect (`{"error": {...}}`, or its inside)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("message"), inner.get("type"), inner.get("param")
    return (str(body) if body else None), None, None


@dataclass
class Demux:
    """One upstream stream split into one stream of pieces per choice (OpenAI's `n` interleaves them), read by
    one task so no choice waits on a reader that is not there."""

    events: AsyncIterator[tuple[int, AnswerPiece]]
    n: int
    upstream: Upstream
    record: RequestRecord
    queues: list[asyncio.Queue[Any]] = field(default_factory=list)

    def start(self) -> tuple[list[AsyncIterator[AnswerPiece]], Callable[[], None]]:
        self.queues = [asyncio.Queue() for _ in range(self.n)]
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._pump())

        def cancel() -> None:  # called from the event loop, or from a thread pool (Starlette's background task)
            loop.call_soon_threadsafe(task.cancel)

        return [self._read(q) for q in self.queues], cancel

    async def _pump(self) -> None:
        try:
            async for i, piece in self.events:
                if piece.finish_reason is not None:
                    r = self.record
                    r.prompt_tokens, r.finish_reason = piece.prompt_tokens, piece.finish_reason
                    r.completion_tokens = (r.completion_tokens or 0) + piece.completion_tokens
                await self.queues[i].put(piece)
            end: Any = _END
        except Exception as e:  # handed to every reader: none may wait for an end that never comes
            end = e if isinstance(e, ServingError) else self.upstream.error(e)
        for q in self.queues:
            await q.put(end)

    @staticmethod
    async def _read(queue: asyncio.Queue[Any]) -> AsyncIterator[AnswerPiece]:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _logprobs(content: list[Any] | None) -> tuple[TokenLogprob, ...]:
    def one(t: Any, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        return TokenLogprob(t.token, list(t.bytes or []), t.logprob, top)

    return tuple(one(t, tuple(one(x) for x in t.top_logprobs or [])) for t in content or [])


async def _openai_pieces(stream: Any, n: int) -> AsyncIterator[tuple[int, AnswerPiece]]:
    """OpenAI chunks as (choice, piece); each choice's last piece (finish reason, counts) once usage arrives,
    the total completion tokens on choice 0 (OpenAI counts them over all choices)."""
    calls: list[dict[int, dict[str, str]]] = [{} for _ in range(n)]
    finish: list[str | None] = [None] * n
    prompt_tokens = completion_tokens = 0
    try:
        async for chunk in stream:
            if chunk.usage is not None:
                prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            for c in chunk.choices:
                text = (c.delta.content or "") if c.delta else ""
                lps = _logprobs(c.logprobs.content) if c.logprobs else ()
                for tc in (c.delta.tool_calls if c.delta else None) or []:
                    slot = calls[c.index].setdefault(tc.index, {"name": "", "arguments": ""})
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
                if text or lps:
                    yield c.index, AnswerPiece(text, logprobs=lps)
                if c.finish_reason is not None:
                    finish[c.index] = "length" if c.finish_reason == "length" else "stop"
                    made = tuple(Call(s["name"], s["arguments"] or "{}") for _, s in sorted(calls[c.index].items()))
                    if made:
                        yield c.index, AnswerPiece("", calls=made)
    finally:
        await stream.close()
    for i in range(n):
        yield i, AnswerPiece("", finish[i] or "stop", prompt_tokens, completion_tokens if i == 0 else 0)


async def _anthropic_pieces(stream: Any) -> AsyncIterator[tuple[int, AnswerPiece]]:
    """Anthropic's events as (0, piece): text as it comes, each tool_use block as one call when it closes."""
    tool: dict[str, str] | None = None
    prompt_tokens = completion_tokens = 0
    reason: str | None = None
    stop_sequence: str | None = None
    try:
        async for event in stream:
            if event.type == "message_start":
                prompt_tokens = event.message.usage.input_tokens
            elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                tool = {"name": event.content_block.name, "json": ""}
            elif event.type == "content_block_delta":
                if event.delta.type == "text_delta" and event.delta.text:
                    yield 0, AnswerPiece(event.delta.text)
                elif event.delta.type == "input_json_delta" and tool is not None:
                    tool["json"] += event.delta.partial_json
            elif event.type == "content_block_stop" and tool is not None:
                args = json.dumps(json.loads(tool["json"])) if tool["json"].strip() else "{}"
                yield 0, AnswerPiece("", calls=(Call(tool["name"], args),))
                tool = None
            elif event.type == "message_delta":
                reason, stop_sequence = event.delta.stop_reason, event.delta.stop_sequence
                completion_tokens = event.usage.output_tokens
    finally:
        await stream.close()
    finish = ANTHROPIC_FINISH.get(reason or "", "stop")
    yield 0, AnswerPiece("", finish, prompt_tokens, completion_tokens, stop_sequence=stop_sequence)


class Upstreams(dict[str, Upstream]):
    """The configured upstreams by the model name clients send."""

    @classmethod
    def of(cls, upstreams: dict[str, UpstreamParams], keys: dict[str, str], default_max_tokens: int) -> Upstreams:
        return cls({n: Upstream(n, p, keys.get(n), default_max_tokens) for n, p in upstreams.items()})
