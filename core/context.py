"""RAG context assembly: search hits -> the numbered sources of the prompt, within a token budget.

1. Duplicates (the same chunk twice) go.
2. Hits from one document whose chunk positions lie within `neighbour_window` of each other become one
   source, its chunks in document order; the overlap adjacent chunks share (the chunker's overlap) is
   written once.
3. Sources are ordered by their best hit's score and numbered from 1, as the prompt and citations number them.
4. Sources are taken while they fit in `budget_tokens`; the first is cut to the budget if it alone does not
   fit, so a question never goes out with no context.
Shared by serving (serving/engines/rag.py) and evaluation, so what is measured is what is served.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Passage:
    """One search hit, as context assembly needs it."""

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    """Chunk metadata from the index: `doc_id`, `position`, `source`, `title`, `heading`, `start`, `end`."""


@dataclass
class Source:
    number: int
    passages: list[Passage]
    text: str
    score: float

    @property
    def chunk_ids(self) -> list[str]:
        return [p.id for p in self.passages]

    @property
    def span(self) -> tuple[int, int] | None:
        """The character span in the document's text from the first to the last of its chunks (None when the
        index holds no spans: built before they were recorded)."""
        spans = [(p.metadata.get("start"), p.metadata.get("end")) for p in self.passages]
        ints = [(a, b) for a, b in spans if isinstance(a, int) and isinstance(b, int)]
        if len(ints) < len(spans):
            return None
        return min(a for a, _ in ints), max(b for _, b in ints)

    @property
    def metadata(self) -> dict[str, Any]:
        """The first passage's document fields (every passage of a source is of one document)."""
        return self.passages[0].metadata


def _overlap_join(a: str, b: str, min_overlap: int = 16) -> str:
    """`a` then `b`, writing once the longest suffix of `a` that is a prefix of `b` (at least `min_overlap` chars)."""
    for k in range(min(len(a), len(b)), min_overlap - 1, -1):
        if a.endswith(b[:k]):
            return a + b[k:]
    return a + "\n" + b


def _position(p: Passage) -> int | None:
    pos = p.metadata.get("position")
    return int(pos) if isinstance(pos, int | float) else None


def assemble(
    hits: Sequence[Passage], count_tokens: Callable[[str], int], budget_tokens: int, neighbour_window: int = 1
) -> list[Source]:
    """The numbered sources for `hits` (best first), see the module docstring."""
    groups: list[list[Passage]] = []
    seen: set[str] = set()
    for hit in sorted(hits, key=lambda h: -h.score):
        if hit.id in seen:
            continue
        seen.add(hit.id)
        doc, pos = hit.metadata.get("doc_id"), _position(hit)
        home = None
        if doc is not None and pos is not None and neighbour_window > 0:
            home = next(
                (
                    g
                    for g in groups
                    if g[0].metadata.get("doc_id") == doc
                    and any((q := _position(m)) is not None and abs(q - pos) <= neighbour_window for m in g)
                ),
                None,
            )
        if home is None:
            groups.append([hit])
        else:
            home.append(hit)
    sources: list[Source] = []
    used = 0
    for group in groups:  # already in order of their best hit
        ordered = sorted(group, key=lambda m: _position(m) or 0)
        text = ordered[0].text.strip()
        for prev, cur in itertools.pairwise(ordered):
            adjacent = (_position(cur) or 0) - (_position(prev) or 0) == 1
            text = _overlap_join(text, cur.text.strip()) if adjacent else text + "\n…\n" + cur.text.strip()
        tokens = count_tokens(text)
        if used + tokens > budget_tokens:
            if sources:
                break
            text = text[: max(1, len(text) * budget_tokens // max(tokens, 1))]  # the first source, cut to fit
            tokens = budget_tokens
        sources.append(Source(len(sources) + 1, ordered, text, max(m.score for m in group)))
        used += tokens
    return sources
