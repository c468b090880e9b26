"""RAG orchestration: retrieve -> the prompt the chat model was fine-tuned on -> generate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.prompts import rag_messages
from core.retrieval_params import Mode
from serving.engines.chat import ChatEngine, GenerationHandle
from serving.engines.retriever import Retriever
from serving.engines.types import SamplingParams, SearchHit


@dataclass
class RagRun:
    """A started RAG generation: the passages it was given and the handle streaming its answer."""

    sources: list[SearchHit]
    generation: GenerationHandle


class RagService:
    def __init__(self, retriever: Retriever, chat: ChatEngine, *, default_top_k: int = 4) -> None:
        self.retriever = retriever
        self.chat = chat
        self.default_top_k = default_top_k

    async def start(
        self,
        question: str,
        params: SamplingParams,
        top_k: int | None = None,
        where: dict[str, Any] | None = None,
        mode: Mode | None = None,
    ) -> RagRun:
        """Retrieve passages for `question` and queue its answer (context and queue checks happen here).

        Raises:
            InvalidRequest / ContextLengthExceeded / QueueFull: see Retriever.search and ChatEngine.submit.
        """
        hits = await self.retriever.search(question, top_k or self.default_top_k, where, mode)
        prompt = self.chat.encode_messages(rag_messages(question, [h.text for h in hits]))
        return RagRun(hits, self.chat.submit(prompt, params))
