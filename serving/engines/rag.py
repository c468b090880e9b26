"""RAG orchestration: retrieve -> assemble numbered sources (core/context.py) -> the prompt the chat model
was fine-tuned on -> generate; or, when the best hit scores below the registered abstention threshold,
say that nothing relevant was found instead of answering from nothing.

The answer's citations (`[1]`, `[2]`) are checked against the sources given (core/citations.py) by the
handlers, over the whole answer or its stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from core.citations import CitationStream
from core.context import Passage, Source, assemble
from core.prompts import rag_messages
from core.retrieval_params import Mode
from serving.engines.chat import ChatEngine, GenerationHandle
from serving.engines.retriever import Retriever
from serving.engines.types import SamplingParams

NOTHING_FOUND = "I found nothing relevant to this question in the documents, so I cannot answer it from them."
"""The answer when retrieval scores below the abstention threshold (the response also says `abstained`)."""


@dataclass
class RagRun:
    """A started RAG answer: the numbered sources it was given and the handle streaming it (None: abstained)."""

    sources: list[Source]
    generation: GenerationHandle | None
    best_score: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage before generation: `retrieve`, `rerank` (when reranked) and `prompt` (numbering
    the sources within the context budget and tokenising the prompt)."""

    @property
    def abstained(self) -> bool:
        return self.generation is None

    def citations(self) -> CitationStream:
        """A filter for the answer's text: keeps citations of the given sources, drops the others."""
        return CitationStream(len(self.sources))


class RagService:
    def __init__(
        self,
        retriever: Retriever,
        chat: ChatEngine,
        *,
        default_top_k: int = 4,
        context_tokens: int = 1024,
        neighbour_window: int = 1,
    ) -> None:
        self.retriever = retriever
        self.chat = chat
        self.default_top_k = default_top_k
        self.context_tokens = context_tokens
        self.neighbour_window = neighbour_window

    def _count(self, text: str) -> int:
        return len(self.chat.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def start(
        self,
        question: str,
        params: SamplingParams,
        top_k: int | None = None,
        where: dict[str, Any] | None = None,
        mode: Mode | None = None,
        min_score: float | None = None,
        rerank: bool | None = None,
    ) -> RagRun:
        """Retrieve passages for `question` and queue its answer (context and queue checks happen here).

        Raises:
            InvalidRequest / ContextLengthExceeded / QueueFull: see Retriever.search and ChatEngine.submit.
        """
        found = await self.retriever.retrieve(question, top_k or self.default_top_k, where, mode, rerank, min_score)
        if found.abstain:
            return RagRun([], None, found.best_score, found.timings)
        start = time.perf_counter()
        passages = [Passage(h.id, h.text, h.score, h.metadata) for h in found.hits]
        sources = assemble(passages, self._count, self.context_tokens, self.neighbour_window)
        prompt = self.chat.encode_messages(rag_messages(question, [s.text for s in sources]))
        timings = found.timings | {"prompt": round((time.perf_counter() - start) * 1000, 2)}
        return RagRun(sources, self.chat.submit(prompt, params), found.best_score, timings)
