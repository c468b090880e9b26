"""A tool-calling answer, read as it streams: text goes out as content, each call once it is whole.

Which it is, is known from the first character: under `required` or a named tool the grammar allows only
calls, and under `auto` free text may not begin with `<` (core/tool_calls.py), so an answer that starts
with `<` is calls. Calls are sent whole (one `tool_calls` delta each, with its id, name and all its
arguments), which OpenAI's stream accumulators read like any other split.
"""

from __future__ import annotations

from typing import Literal

from core.tool_calls import CLOSE, Call, ToolChoice, parse
from serving.schemas.tools import ToolCall


class ToolCallReader:
    def __init__(self, choice: ToolChoice) -> None:
        self.mode: Literal["text", "calls", "undecided"] = (
            "text" if choice == "none" else "undecided" if choice == "auto" else "calls"
        )
        self._buf = ""
        self.calls: list[ToolCall] = []

    def push(self, text: str) -> tuple[str, list[ToolCall]]:
        """The content to send now, and the calls completed by `text`."""
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
        done: list[ToolCall] = []
        while CLOSE in self._buf:
            block, self._buf = self._buf.split(CLOSE, 1)
            _, calls = parse(block.lstrip("\n") + CLOSE)
            done += [ToolCall.of(c) for c in calls]
        self.calls += done
        return "", done

    def add(self, calls: tuple[Call, ...]) -> list[ToolCall]:
        """Calls that came structured (an upstream model's), numbered after those already read."""
        done = [ToolCall.of(c) for c in calls]
        self.calls += done
        return done

    def finish(self) -> str:
        """What is left unsent (a call cut short by max_tokens): returned as content, never made into a call."""
        out, self._buf = self._buf, ""
        return out
