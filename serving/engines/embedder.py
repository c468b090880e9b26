"""Embedder engine: concurrent requests share forward passes through one micro-batcher.

Why our own micro-batcher rather than BentoML's adaptive batching (`batchable=True`), measured
(`make bench-batching` at commit 1cacb4b: the same champion embedder behind a bare batchable BentoML API,
both driven by wrk with one text per request, 2-core CPU, medians of 2 rounds; rerun it for today's code):

    | server                                 | 1 client | 64 clients | ratio | 503s | p99 at 1 client |
    | BentoML batchable, 32 / 1000 ms        | 68.8/s   | 265.1/s    | 3.9x  | 0    | 118-151 ms      |
    | BentoML batchable, 32 / 60000 ms       | 67.3/s   | 259.3/s    | 3.9x  | 0    |                 |
    | BentoML, no batching                   | 67.5/s   | 68.0/s     | 1.0x  | 0    | 16-18 ms        |
    | ours (this module), 32 / 5 ms          | 51.4/s   | 254.2/s    | 4.9x  | 0    | 22 ms           |

Throughput under load is the same, so the choice rests on the rest:
- BentoML's dispatcher turns overload into 503 "process is overloaded" for requests it predicts will miss
  `max_latency_ms` (a shedding deadline, not a wait window; shared PEERS.md records 93% shed at 64 clients
  with 1000 ms, not reproduced with these short texts, so it depends on the per-batch cost). Here the wait
  window (`embed_max_wait_ms`) only bounds how long a text waits for company, and the queue bound
  (`embed_max_queue`) is the one place work is refused, with 429 and Retry-After, which OpenAI clients retry.
- Its learned wait adds a tail at low load (p99 above).
- Our lower 1-client figure in that table was our own fixed wait window: a lone text waited 5 ms for
  company that never came. The window now applies only when the previous pass had company (below); with
  that, the JSON written by pydantic-core and no thread-pool hop per request (service.py), `make bench`
  gives about 70 texts/s at 1 client and 285/s at 64 (4.1x), on the same machine.
- A batchable BentoML API batches in the HTTP layer of its own service, so the retriever (which embeds
  queries in-process) would need an HTTP hop to share it; here /v1/embeddings and /v1/search share it.
- Batching by text, not by request: a request with 100 inputs is split across forward passes of at most
  `embed_max_batch_size` texts, so one big request cannot make a single-text request wait behind a giant batch.

Out of memory in a forward pass: the device cache is freed and the batch is split in halves and retried,
down to one text (which then fails alone with 503); the batch cap halves too and grows back one text per
64 batches without an error (`core.device.MemoryBackoff`, shared with the chat engine).

The model is a sentence-transformers embedder or its fp32 ONNX export on ONNX Runtime (the same vectors, faster
where Python is a large share of a pass: `serving.embedder_backend`, core/onnx_embedder.py); both answer `encode`.

The batcher is a plain asyncio component, unit-tested without a server (tests/serving/test_engines.py).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sentence_transformers import SentenceTransformer

from core.device import MemoryBackoff, free_memory, is_oom
from core.errors import ContextLengthExceeded, InvalidRequest, Overloaded, PayloadTooLarge, QueueFull
from core.log import get_logger
from core.onnx_embedder import OnnxEmbedder
from serving.engines.types import EngineHealth, EngineObserver

log = get_logger(__name__)


@dataclass
class _Item:
    text: str
    future: asyncio.Future[np.ndarray]
    enqueued_at: float


class EmbedderEngine:
    """Normalised sentence embeddings with cross-request micro-batching."""

    name = "embedder"

    def __init__(
        self,
        model: SentenceTransformer | OnnxEmbedder,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        max_inputs: int = 256,
        retry_after_s: int = 1,
        observer: EngineObserver | None = None,
    ) -> None:
        self.model = model
        self.runtime = str(getattr(model, "method", "sentence-transformers"))
        self.max_batch_size = max_batch_size
        self.backoff = MemoryBackoff(max_batch_size)  # texts per forward pass: halved on out-of-memory
        self.max_wait_s = max_wait_ms / 1000
        self._last_batch = 0  # texts in the previous forward pass: 1 means nobody to wait for
        self.max_queue = max_queue
        self.max_inputs = max_inputs
        self.retry_after_s = retry_after_s
        self.observer = observer or EngineObserver()
        self.max_tokens = int(model.max_seq_length or 256)
        self.dimension = int(model.get_embedding_dimension() or 0)
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running = 0  # texts in the forward pass now
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")  # one forward at a time

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens included)."""
        return [len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def check(self, texts: list[str]) -> list[int]:
        """Validate a request's texts before queueing; returns their token counts.

        Raises:
            InvalidRequest: an empty list or an empty text.
            PayloadTooLarge: more texts than `max_inputs`.
            ContextLengthExceeded: a text longer than the model's window (never truncated silently).
        """
        if not texts:
            raise InvalidRequest("input must hold at least one text", param="input")
        if len(texts) > self.max_inputs:
            raise PayloadTooLarge(f"input holds {len(texts)} texts; the limit is {self.max_inputs} per request")
        if empty := [i for i, t in enumerate(texts) if not t.strip()]:
            raise InvalidRequest(f"input[{empty[0]}] is empty; every text must have content", param="input")
        counts = self.count_tokens(texts)
        if over := [(i, n) for i, n in enumerate(counts) if n > self.max_tokens]:
            i, n = over[0]
            raise ContextLengthExceeded(
                f"input[{i}] has {n} tokens; this embedder's window is {self.max_tokens} tokens "
                f"({len(over)} input(s) over): split the text",
                param="input",
            )
        return counts

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts (already checked) -> (n, dim) float32, L2-normalised.

        Raises:
            QueueFull: the batcher's queue is at its bound.
        """
        queue = self._ensure_worker()
        if queue.qsize() + len(texts) > self.max_queue:
            raise QueueFull(
                f"the embedding queue is full ({queue.qsize()} texts waiting); retry after {self.retry_after_s}s",
                retry_after_s=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(t, loop.create_future(), now) for t in texts]
        for it in items:
            queue.put_nowait(it)
        try:
            return np.stack(await asyncio.gather(*(it.future for it in items)))
        finally:
            for it in items:  # a cancelled request leaves nothing behind to compute
                it.future.cancel()

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """Direct, unbatched embedding (warm-up, scripts)."""
        return np.asarray(self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)

    def embed_fitting(self, texts: list[str]) -> np.ndarray:
        """`embed_sync`, splitting the batch in halves while the device runs out of memory.

        Raises:
            Overloaded: one text alone does not fit.
        """
        try:
            out = self.embed_sync(texts)
        except Exception as e:
            if not is_oom(e):
                raise
            free_memory(self.model.device)
            if len(texts) == 1:
                raise Overloaded("out of memory embedding one text; retry later, or send a shorter text") from e
            log.warning(
                "out of memory embedding %d texts; retrying in halves, at most %d per batch",
                len(texts),
                self.backoff.shrink(len(texts)),
            )
            half = len(texts) // 2
            return np.concatenate([self.embed_fitting(texts[:half]), self.embed_fitting(texts[half:])])
        self.backoff.succeeded()
        return out

    def close(self) -> None:
        """Stop the batching loop and its forward thread (a rollout retiring this engine; nothing is queued)."""
        worker, self._worker, self._queue = self._worker, None, None
        if worker is not None and not worker.done():
            worker.get_loop().call_soon_threadsafe(worker.cancel)
        self._pool.shutdown(wait=False)

    def warmup(self) -> None:
        self.embed_sync(["warm up"])
        self._report_load()  # the gauges exist (at 0) from the start, not from the first request

    def load(self) -> dict[str, int]:
        """Texts in the forward pass now, texts queued, and the current cap on a pass."""
        waiting = self._queue.qsize() if self._queue is not None else 0
        return {"running": self._running, "waiting": waiting, "limit": self.backoff.value}

    def health(self) -> EngineHealth:
        """Unhealthy only if the batching loop died (it catches a failed batch and lives on)."""
        w = self._worker
        if w is not None and w.done() and not w.cancelled() and w.exception() is not None:
            return EngineHealth(False, f"the embedding batch loop stopped: {w.exception()!r}")
        return EngineHealth(True)

    def _report_load(self) -> None:
        load = self.load()
        self.observer.load(self.name, load["running"], load["waiting"])

    def _ensure_worker(self) -> asyncio.Queue[_Item]:
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._batch_loop(self._queue))
        return self._queue

    async def _batch_loop(self, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            # Wait for company only when the last pass had some: a lone client is served at once (no wait
            # window in its latency), concurrent ones get full batches. Whatever is queued is taken either way.
            deadline = loop.time() + (self.max_wait_s if self._last_batch > 1 else 0.0)
            while len(batch) < self.backoff.value:
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(queue.get_nowait())
            batch = [it for it in batch if not it.future.done()]  # drop texts of cancelled requests
            self._last_batch = len(batch)
            if not batch:
                continue
            now = time.monotonic()
            for it in batch:
                self.observer.queue_time(self.name, now - it.enqueued_at)
            self.observer.batch_size(self.name, len(batch))
            self._running = len(batch)
            self._report_load()
            try:
                vectors = await loop.run_in_executor(self._pool, self.embed_fitting, [it.text for it in batch])
            except Exception as e:  # the loop lives on; only this batch fails
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            finally:
                self._running = 0
                self._report_load()
            for it, v in zip(batch, vectors, strict=True):
                if not it.future.done():
                    it.future.set_result(v)
