"""/v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the same engine path as chat.

The request is converted to the OpenAI dialect (serving/schemas/anthropic.py) and started by
`ChatHandler.start`, so both dialects share sampling, constrained decoding, tools and RAG; this module
only shapes the answer: content blocks (text, and `tool_use` for calls), `stop_reason`, usage, and the
streamed event sequence

    message_start, then per block: content_block_start, content_block_delta..., content_block_stop,
    then message_delta (stop_reason, usage) and message_stop

with a text block streamed as `text_delta`s and a call as one `input_json_delta` holding its whole input
(calls are known whole once their closing tag arrives: serving/handlers/tools.py). `model: "rag"` answers
with one text block whose `citations` locate each cited source in its document (`char_location`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from core.tool_calls import parse
from serving.handlers.base import EventStream, RequestRecord
from serving.handlers.chat import ChatHandler, Started
from serving.handlers.rag import AnswerPiece, RagAnswer
from serving.handlers.tools import ToolCallReader
from serving.platform import Platform
from serving.schemas import new_id
from serving.schemas.anthropic import (
    CitedSource,
    CountTokensRequest,
    MessagesRequest,
    MessagesResponse,
    TextOut,
    ToolUseOut,
    Usage,
    message_id,
    stop_reason,
)
from serving.schemas.upstream import anthropic_payload


class MessagesHandler:
    def __init__(self, platform: Platform, chat: ChatHandler, temperature: float = 1.0, top_p: float = 1.0) -> None:
        self.platform = platform
        self.chat = chat
        self.temperature, self.top_p = temperature, top_p
        """What applies when a request sends none (`serving.messages_temperature`, `messages_top_p`)."""

    async def create(self, req: MessagesRequest, record: RequestRecord) -> MessagesResponse | EventStream:
        """Start the answer; the whole message, or its events when `stream` is set.

        Raises:
            what `ChatHandler.start` raises (the edge writes it in Anthropic's error shape).
        """
        # an upstream model applies its own defaults to what the client left unset
        defaults = (None, None) if self.chat.is_upstream(req.model) else (self.temperature, self.top_p)
        started = await self.chat.start(req.to_chat_request(*defaults), record)
        if req.stream:
            return EventStream(self._events(req.model, started, record), started.cancel, dialect="anthropic")
        [(text, last, _)] = await started.collect()
        blocks: list[TextOut | ToolUseOut] = []
        content, calls = parse(text) if started.choice != "none" else (text, [])
        calls += last.calls  # an upstream model's, structured
        if content:
            blocks.append(TextOut(text=content, citations=_citations(started.answer, last)))
        blocks += [ToolUseOut(id=new_id("toolu"), name=c.name, input=json.loads(c.arguments)) for c in calls]
        return MessagesResponse(
            id=message_id(),
            model=req.model,
            content=blocks,
            stop_reason=stop_reason(last.finish_reason, last.stop_sequence, bool(calls)),
            stop_sequence=last.stop_sequence,
            usage=Usage(input_tokens=last.prompt_tokens, output_tokens=last.completion_tokens),
        )

    async def count_tokens(self, req: CountTokensRequest) -> dict[str, int]:
        """The prompt's tokens as the chat model would see them (tools included); an Anthropic upstream counts its
        own model's.

        Raises:
            InvalidRequest: an OpenAI-compatible upstream model (it cannot count ahead). Upstream errors.
        """
        chat = req.as_messages_request().to_chat_request()
        upstream = self.chat.upstreams.get(req.model)
        if upstream is not None:
            body = anthropic_payload(chat, upstream.params.model, 1)
            kept = {k: v for k, v in body.items() if k in ("messages", "system", "tools", "tool_choice")}
            return {"input_tokens": await upstream.count_tokens(kept)}
        prompt = self.platform.chat.encode_messages(chat.template_messages(), chat.template_tools())
        return {"input_tokens": len(prompt)}

    async def _events(self, model: str, started: Started, record: RequestRecord) -> AsyncIterator[dict[str, Any]]:
        [stream] = started.streams
        reader = ToolCallReader(started.choice)
        usage0 = {"input_tokens": record.prompt_tokens or 0, "output_tokens": 0}
        msg: dict[str, Any] = {
            "id": message_id(), "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage0,
        }  # fmt: skip
        yield {"type": "message_start", "message": msg}
        index, text_open, tool_open = 0, False, False
        last = AnswerPiece("")
        async for piece in stream:
            last = piece
            content, events = reader.push(piece.text)
            events += reader.add(piece.calls)
            if piece.finish_reason is not None:
                rest, more = reader.finish()
                content, events = content + rest, events + more
            if content:
                if not text_open:
                    yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
                    text_open = True
                yield {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": content}}
            for event in events:  # a call is a tool_use block: its input streams as input_json_delta fragments
                if event.id is not None:
                    if text_open:
                        yield {"type": "content_block_stop", "index": index}
                        index, text_open = index + 1, False
                    start: dict[str, Any] = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
                    yield {"type": "content_block_start", "index": index, "content_block": start}
                    tool_open = True
                if event.arguments:
                    delta = {"type": "input_json_delta", "partial_json": event.arguments}
                    yield {"type": "content_block_delta", "index": index, "delta": delta}
                if event.done:
                    yield {"type": "content_block_stop", "index": index}
                    index, tool_open = index + 1, False
        if tool_open:  # cut short by max_tokens inside its arguments
            yield {"type": "content_block_stop", "index": index}
        elif text_open:
            cited = _citations(started.answer, last)
            if cited:
                for c in cited:
                    yield {"type": "content_block_delta", "index": index,
                           "delta": {"type": "citations_delta", "citation": c.model_dump()}}  # fmt: skip
            yield {"type": "content_block_stop", "index": index}
        reason = stop_reason(last.finish_reason, last.stop_sequence, bool(reader.calls))
        yield {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": last.stop_sequence},
               "usage": {"input_tokens": last.prompt_tokens, "output_tokens": last.completion_tokens}}  # fmt: skip
        yield {"type": "message_stop"}


def _citations(answer: RagAnswer | None, last: AnswerPiece) -> list[CitedSource] | None:
    """RAG: each cited source as a `char_location` citation (None for the plain chat model)."""
    if answer is None:
        return None
    by_number = {s.number: s for s in answer.sources}
    out = []
    for n in last.citations or []:
        s = by_number.get(n)
        if s is None:
            continue
        start, end = s.span or (0, len(s.text))
        out.append(CitedSource(cited_text=s.text, document_index=n - 1, document_title=s.title or s.source,
                               start_char_index=start, end_char_index=end))  # fmt: skip
    return out
