"""Citations in RAG answers: `[1]`, `[2]`, `[1, 3]` refer to the numbered sources of the prompt.

A citation of a number that was not given (the model invents `[7]` with 4 sources) is removed, with the
space before it; the numbers that were given are kept and reported. The same rules run over a whole
answer (`clean`) and over a stream of deltas (`CitationStream`, which holds back only what could still
become a citation: an open `[` followed by digits, commas and spaces), so a streamed answer joins to
exactly the cleaned whole answer. Shared by serving (responses) and evaluation (citation precision).
"""

from __future__ import annotations

import re

CITATION = re.compile(r" ?\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_OPEN = re.compile(r"\[[\d,\s]{0,16}$")
"""The tail of a text that may still become a citation when more text arrives."""


def _replace(match: re.Match[str], n_sources: int, cited: list[int]) -> str:
    numbers = [int(x) for x in match.group(1).split(",")]
    valid = [k for k in numbers if 1 <= k <= n_sources]
    for k in valid:
        if k not in cited:
            cited.append(k)
    if not valid:
        return ""
    lead = " " if match.group(0).startswith(" ") else ""
    return lead + "[" + ", ".join(str(k) for k in valid) + "]"


def clean(text: str, n_sources: int) -> tuple[str, list[int]]:
    """`text` without citations of sources that were not given, and the source numbers cited, in order of
    first appearance."""
    cited: list[int] = []
    return CITATION.sub(lambda m: _replace(m, n_sources, cited), text), cited


class CitationStream:
    """Applies `clean` to an answer arriving in pieces; `feed` returns what is safe to send now."""

    def __init__(self, n_sources: int) -> None:
        self.n_sources = n_sources
        self.cited: list[int] = []
        self._pending = ""

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        # keep back an unfinished `[12, `, and the space before it (or a trailing space): a citation that
        # turns out invalid is removed with the space before it
        tail = _OPEN.search(text)
        cut = tail.start() if tail else len(text)
        if cut > 0 and text[cut - 1] == " ":
            cut -= 1
        ready, self._pending = text[:cut], text[cut:]
        out, cited = clean(ready, self.n_sources)
        self.cited.extend(k for k in cited if k not in self.cited)
        return out

    def flush(self) -> str:
        """What was held back, once the answer is complete."""
        out, cited = clean(self._pending, self.n_sources)
        self.cited.extend(k for k in cited if k not in self.cited)
        self._pending = ""
        return out
