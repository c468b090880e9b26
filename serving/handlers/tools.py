"""A tool-calling answer, read as it streams: text goes out as content, each call as OpenAI streams one.

Which it is, is known from the first character: under `required` or a named tool the grammar allows only
calls, and under `auto` free text may not begin with `<` (core/tool_calls.py), so an answer that starts
with `<` is calls. A call goes out as OpenAI streams it: one event with its id and name as soon as its header
(`<tool_call>\\n{"name": "...", "arguments": `) is whole, then its arguments' JSON text in fragments as the
model writes them, then its end (the call object's closing `}` and the closing tag are held back until they
can be told apart from the arguments). The grammar writes the header in exactly that shape; a call in any
other shape (no grammar held it) is read whole at its closing tag and sent as one event.

Calls that arrive structured (an upstream model's) are sent whole, as one event each (`add`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from core.tool_calls import CLOSE, Call, ToolChoice, parse
from serving.schemas.base import new_id
from serving.schemas.tools import FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta

HEADER = re.compile(r'\n?<tool_call>\n\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')
TAIL = "}" + CLOSE
"""What ends a call after its arguments: never sent as arguments, so held back until the closing tag arrives."""


@dataclass(frozen=True)
class CallEvent:
    """A step of one streamed call: its start (`id` and `name`), a fragment of its arguments, its end (`done`)."""

    index: int
    """The call's number in the answer (OpenAI's `tool_calls[].index`)."""
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    done: bool = False


class ToolCallReader:
    def __init__(self, choice: ToolChoice) -> None:
        self.mode: Literal["text", "calls", "undecided"] = (
            "text" if choice == "none" else "undecided" if choice == "auto" else "calls"
        )
        self._buf = ""
        self._open: ToolCall | None = None
        """The call whose arguments are streaming."""
        self.calls: list[ToolCall] = []
        """Every call started so far (the open one's arguments as sent so far)."""

    def push(self, text: str) -> tuple[str, list[CallEvent]]:
        """The content to send now, and the call events `text` completes."""
        if self.mode == "text":
            return text, []
        self._buf += text
        if self.mode == "undecided":
            if not self._buf:
                return "", []
            if not self._buf.startswith("<"):
                self.mode, out, self._buf = "text", self._buf, ""
                return out, []
            self.mode = "calls"
        events: list[CallEvent] = []
        while self._step(events):
            pass
        return "", events

    def _step(self, events: list[CallEvent]) -> bool:
        """Read what the buffer allows into `events`; True while there may be more to read."""
        if self._open is None:
            header = HEADER.match(self._buf)
            if header is None:
                if CLOSE not in self._buf:
                    return False  # a header still coming
                block, self._buf = self._buf.split(CLOSE, 1)  # a call in another shape: whole, or nothing
                _, calls = parse(block.lstrip("\n") + CLOSE)
                events += self.add(tuple(calls))
                return True
            self._open = ToolCall(id=new_id("call"), function=FunctionCall(name=json.loads(header[1]), arguments=""))
            self.calls.append(self._open)
            events.append(CallEvent(len(self.calls) - 1, self._open.id, self._open.function.name))
            self._buf = self._buf[header.end() :]
        if CLOSE in self._buf:
            body, self._buf = self._buf.split(CLOSE, 1)
            events.append(self._arguments(body.removesuffix("}"), done=True))
            self._open = None
            return True
        ready = len(self._buf) - len(TAIL)
        if ready > 0:
            events.append(self._arguments(self._buf[:ready]))
            self._buf = self._buf[ready:]
        return False

    def _arguments(self, fragment: str, done: bool = False) -> CallEvent:
        assert self._open is not None
        self._open.function.arguments += fragment
        return CallEvent(len(self.calls) - 1, arguments=fragment, done=done)

    def add(self, calls: tuple[Call, ...]) -> list[CallEvent]:
        """Calls that came structured (an upstream model's): one whole event each, numbered after those read."""
        events = []
        for c in calls:
            call = ToolCall.of(c)
            self.calls.append(call)
            events.append(CallEvent(len(self.calls) - 1, call.id, c.name, c.arguments, done=True))
        return events

    def finish(self) -> tuple[str, list[CallEvent]]:
        """What is left unsent when the answer ends: the rest of a call's arguments cut short by max_tokens (sent
        as arguments, as OpenAI does: the finish reason `length` says the call is incomplete), or a header that
        never completed (sent as content, never made into a call)."""
        out, self._buf = self._buf, ""
        if self._open is not None:
            event = self._arguments(out, done=True)
            self._open = None
            return "", [event] if out else []
        return out, []


def openai_delta(event: CallEvent) -> ToolCallDelta | None:
    """A call event as OpenAI streams it: the first with id, type and name (and arguments so far, `""` when none),
    then the arguments' fragments alone; None for an end with nothing left to send."""
    if event.id is not None:
        fn = FunctionCallDelta(name=event.name, arguments=event.arguments)
        return ToolCallDelta(index=event.index, id=event.id, type="function", function=fn)
    if event.arguments:
        return ToolCallDelta(index=event.index, function=FunctionCallDelta(arguments=event.arguments))
    return None
