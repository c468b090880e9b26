"""The chat scheduler: one thread running admit → prefill → decode step → emit → retire, and nothing else.

    admit       take waiting requests into free slots (FIFO; cancelled and expired ones are dropped), when no
                prompt is part-way through its prefill
    prefill     a left-padded forward over the admitted prompts: whole when nothing is decoding, else the next
                chunk of `prefill_chunk_tokens` (chunked prefill); after the last, their first tokens join the batch
    decode step one forward of every running row's `next` token against the shared cache
    emit        each row's `Request.emit` (detokenize, stop strings / EOS / max_tokens) -> its consumer
    retire      select away finished, cancelled and timed-out rows (trimming all-padding columns)

Out of memory in a step (prefill or decode), vLLM's recompute preemption: the batch (its cache may be
half-updated) is dropped, the device cache freed, and every live request goes back to the front of the
queue keeping what it generated; the slot limit is halved, so the retry runs smaller batches, and
re-admission prefills prompt + generated tokens, so a greedy answer is unchanged. A single request that
still does not fit fails alone with `Overloaded`. The limit grows back one slot per 64 decode steps
without an error (`core.device.MemoryBackoff`).

Any other error in a step fails the requests in flight and counts against health (`health.py`); an
error outside a step ends the thread, and health says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from core.device import MemoryBackoff, free_memory, is_oom
from core.errors import Overloaded
from core.log import get_logger
from serving.engines.generation.batch import Batch
from serving.engines.generation.forward import (
    Prefilling,
    begin_prefill,
    decode,
    finish_prefill,
    prefill_step,
    prefix_kv,
)
from serving.engines.generation.health import StepHealth
from serving.engines.generation.prefix_cache import PrefixCache
from serving.engines.generation.request import Request, generation_timeout, out_of_memory_alone, queue_timeout
from serving.engines.generation.sampling import sample
from serving.engines.generation.waiting import WaitingQueue
from serving.engines.types import EngineObserver

log = get_logger(__name__)


class Scheduler:
    """Owns the running batch; `run` is the scheduler thread's body. Built and started by `ChatEngine`."""

    def __init__(
        self,
        model: PreTrainedModel,
        waiting: WaitingQueue,
        *,
        name: str,
        pad_id: int,
        eos_ids: set[int],
        window: int,
        timeout_s: float,
        retry_after_s: int,
        backoff: MemoryBackoff,
        health: StepHealth,
        observer: EngineObserver,
        report_load: Callable[[], None],
        prefill_chunk_tokens: int = 0,
        prefixes: PrefixCache | None = None,
        decode_threads: int | None = None,
    ) -> None:
        self.model, self.waiting, self.name = model, waiting, name
        self.pad_id, self.eos_ids, self.window = pad_id, eos_ids, window
        self.timeout_s, self.retry_after_s = timeout_s, retry_after_s
        self.backoff, self.health, self.observer, self.report_load = backoff, health, observer, report_load
        self.device = next(model.parameters()).device
        self.batch: Batch[Request] = Batch.empty(self.device)
        self.admitting: list[Request] = []  # taken from the queue, being prefilled: busy slots
        self.prefilling: Prefilling[Request] | None = None  # their prefill, when chunked and part-way through
        self.chunk_tokens = prefill_chunk_tokens
        self.prefixes = prefixes  # kept KV of shared prompt beginnings (None: off)
        self.decode_threads = decode_threads  # torch threads during decode steps (None: as set for the process)

    @property
    def running(self) -> int:
        """Requests holding a slot: in the batch and not finished, or being prefilled (read from any thread).

        A finished row stays in the batch until `_retire`, after its last token was sent: counting it would
        refuse a client that sent its next request the moment the answer arrived (`WaitingQueue.put`).
        """
        return sum(not r.done for r in list(self.batch.rows)) + len(self.admitting)

    def run(self) -> None:
        """Iterate until the queue is stopped, then fail what is left; record why if the thread dies."""
        try:
            while self.waiting.wait(busy=lambda: bool(self.batch) or self.prefilling is not None):
                self._iteration()
            self._fail_all(Overloaded("the chat engine stopped", retry_after_s=self.retry_after_s))
        except BaseException as e:  # a bug outside a step: record why, so health() says so
            self.health.thread_died(e)
            log.exception("chat scheduler thread died", exc_info=e)
            self._fail_all(Overloaded("the chat engine failed; retry later", retry_after_s=self.retry_after_s))

    def _iteration(self) -> None:
        """admit → prefill → decode step (each emitting and retiring), then report the gauges."""
        admitted = self._admit() if self.prefilling is None else list(self.admitting)
        try:
            self._retire([r for r in self.batch.rows if r.cancelled or self._expired(r)])
            if admitted:
                self._prefill()
            if self.batch:
                self._decode_step()
        except Exception as e:  # keep the worker alive; fail only the batch in flight
            if is_oom(e):
                self._preempt_on_oom(admitted)
            else:
                self._step_failed(e, admitted)
        self.report_load()

    def _admit(self) -> list[Request]:
        now = time.monotonic()
        while self.running < self.backoff.value and (req := self.waiting.pop()) is not None:
            if req.cancelled:
                continue
            if now > req.deadline:
                req.fail(queue_timeout(self.timeout_s))
                continue
            self.admitting.append(req)
            if req.admitted_at is None:  # a preempted request re-enters without counting its queue time twice
                req.admitted_at = now
                self.observer.queue_time(self.name, now - req.enqueued_at)
        self.report_load()
        return list(self.admitting)

    def _expired(self, req: Request) -> bool:
        if time.monotonic() > req.deadline:
            req.deliver(generation_timeout(self.timeout_s))
            return True
        return False

    def _prefill(self) -> None:
        """Run the admitted prompts' prefill, or its next chunk while other rows decode; after the last, their
        first tokens are emitted and they join the batch."""
        group = self.admitting
        if all(r.cancelled for r in group):  # everyone left part-way: stop paying for their prompts
            for r in group:
                r.done = True
            self.admitting, self.prefilling = [], None
            return
        if self.prefilling is None:
            contexts = [r.context for r in group]
            hit = self.prefixes.lookup(contexts) if self.prefixes is not None else None
            self.prefilling = begin_prefill(self.model, group, contexts, self.pad_id, hit)
        budget = self.chunk_tokens if self.chunk_tokens and self.batch else None  # alone: the whole prompt at once
        done = prefill_step(self.model, self.prefilling, budget)
        self.health.step_succeeded()
        if not done:
            return  # the next chunk runs after the batch's next decode step
        self._keep_prefixes(self.prefilling)
        new = finish_prefill(self.prefilling, _pick)
        tokens = new.next.view(-1)
        self.admitting, self.prefilling = [], None  # before the merge: a gauge read in between never counts a row twice
        self.batch.merge(new)
        self._retire(self._emit(group, tokens))

    def _keep_prefixes(self, p: Prefilling[Request]) -> None:
        """Keep the KV of the prompt beginnings these prompts share with recent ones (`prefix_cache.py`)."""
        if self.prefixes is None:
            return
        for i, prompt in enumerate(p.prompts):
            n = self.prefixes.worth_keeping(list(prompt))
            if n and not p.reused:  # a prefill that started from a kept prefix has padding inside its rows
                self.prefixes.keep(prompt[:n], prefix_kv(p, i, n))

    def _decode_step(self) -> None:
        with torch_threads(self.decode_threads):
            tokens = decode(self.model, self.batch, _pick)
        self.observer.batch_size(self.name, len(self.batch))
        self.backoff.succeeded()
        self.health.step_succeeded()
        self._retire(self._emit(self.batch.rows, tokens))

    def _emit(self, rows: list[Request], tokens: torch.Tensor) -> list[Request]:
        """Hand each row its token (it sends its own delta); return the rows that finished or were cancelled."""
        eos, window, observer = self.eos_ids, self.window, self.observer
        pairs = zip(rows, tokens.tolist(), strict=True)
        return [r for r, t in pairs if r.cancelled or r.emit(t, eos=t in eos, window=window, observer=observer)]

    def _retire(self, done: list[Request]) -> None:
        if done:
            for r in done:
                r.done = True
            self.batch.select([i for i, r in enumerate(self.batch.rows) if not r.done])

    def _in_flight(self, admitted: list[Request]) -> list[Request]:
        """Running and just-admitted requests, once each; the batch is dropped (its cache may be half-updated)."""
        everyone = list({r.id: r for r in [*self.batch.rows, *admitted]}.values())
        self.batch, self.admitting, self.prefilling = Batch.empty(self.device), [], None
        return everyone

    def _preempt_on_oom(self, admitted: list[Request]) -> None:
        """Out of memory in a step: requeue the live requests in front under a halved slot limit."""
        live = [r for r in self._in_flight(admitted) if not r.done and not r.cancelled]
        free_memory(self.device)
        if len(live) <= 1:
            for r in live:
                r.fail(out_of_memory_alone(len(r.context), self.retry_after_s))
            return
        limit = self.backoff.shrink(len(live))
        log.warning("out of memory with %d requests in the batch; requeued them, at most %d at once", len(live), limit)
        self.waiting.push_front(live)

    def _step_failed(self, exc: Exception, admitted: list[Request]) -> None:
        """A step failed for another reason: count it (health) and fail the requests in flight."""
        self.health.step_failed(exc)  # before failing them: a caller that sees the error sees the count
        log.exception("chat engine step failed; failing the batch in flight", exc_info=exc)
        err = Overloaded("generation failed on the server; retry", retry_after_s=self.retry_after_s)
        for r in self._in_flight(admitted):
            if not r.done:
                r.fail(err)

    def _fail_all(self, err: Overloaded) -> None:
        """The thread is ending: fail everything in flight and waiting."""
        for r in [*self._in_flight(list(self.admitting)), *self.waiting.drain()]:
            if not r.done:
                r.fail(err)
        self.report_load()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` (None: unchanged) for the block, then set back."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pick(logits: torch.Tensor, rows: list[Request]) -> torch.Tensor:
    """(B, vocab) logits -> (B,) tokens, each row through its own sampling chain."""
    return sample(logits, [r.sampler for r in rows])
