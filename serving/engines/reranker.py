"""Reranker engine: a cross-encoder scoring (query, passage) pairs, for /v1/rerank and for search and RAG.

The model is the float cross-encoder (sentence-transformers) or its int8 ONNX form (core/onnx_reranker.py,
`serving.reranker_variant`). One request's pairs go through one `predict` call (batched by `serving.rerank_batch_size`
after sorting by length, so a batch carries little padding) on a dedicated thread, one request at a time: a
cross-encoder forward is compute-bound, so two requests interleaved on two cores finish no sooner than one after the
other, and the event loop stays free. A request waiting for that thread counts as waiting on /v1/status. Scores are the
model's relevance probabilities (sigmoid of its one logit), in [0, 1], higher is more relevant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sentence_transformers.cross_encoder import CrossEncoder

from core.device import free_memory, is_oom
from core.errors import InvalidRequest, Overloaded
from core.log import get_logger
from core.onnx_reranker import OnnxReranker
from serving.engines.types import EngineHealth

log = get_logger(__name__)


class RerankerEngine:
    name = "reranker"

    def __init__(self, model: CrossEncoder | OnnxReranker, *, max_documents: int = 256, batch_size: int = 2) -> None:
        self.model = model
        self.runtime = str(getattr(model, "method", "sentence-transformers"))
        self.max_documents = max_documents
        self.batch_size = batch_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reranker")
        self._running = 0
        self._waiting = 0

    def check(self, query: str, documents: Sequence[str]) -> None:
        """Refuse what cannot be scored, before any work.

        Raises:
            InvalidRequest: an empty query, no documents, or more than `max_documents`.
        """
        if not query.strip():
            raise InvalidRequest("query must not be empty", param="query")
        if not documents:
            raise InvalidRequest("give at least one document to rerank", param="documents")
        if len(documents) > self.max_documents:
            raise InvalidRequest(
                f"at most {self.max_documents} documents per request (got {len(documents)})", param="documents"
            )

    async def score(self, query: str, documents: Sequence[str]) -> list[float]:
        """One relevance score per document, in their order.

        Raises:
            InvalidRequest: see `check`.
            Overloaded: the device ran out of memory (503; retry later or send fewer documents).
        """
        self.check(query, documents)
        pairs = [(query, d) for d in documents]
        self._waiting += 1
        future = self._pool.submit(self._predict, pairs)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.cancel():  # the client left before its turn: it never ran, so it never stopped waiting
                self._waiting -= 1

    def _predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        self._waiting -= 1
        self._running += 1
        try:
            scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        except Exception as e:
            if is_oom(e):
                free_memory(self.model.device)
                raise Overloaded("the reranker ran out of memory: retry, or send fewer documents") from None
            raise
        finally:
            self._running -= 1
        return [float(s) for s in scores]

    def count_tokens(self, query: str, documents: Sequence[str]) -> int:
        """Tokens the model reads for these pairs (query and document together, truncated to its window)."""
        enc = self.model.tokenizer(
            [query] * len(documents), list(documents), truncation=True, max_length=self.model.max_seq_length
        )
        return sum(len(ids) for ids in enc["input_ids"])

    def warmup(self) -> None:
        self.model.predict([("warm up", "a passage")], show_progress_bar=False)

    def health(self) -> EngineHealth:
        return EngineHealth(True)

    def load(self) -> dict[str, int]:
        return {"running": self._running, "waiting": self._waiting, "limit": 1}
