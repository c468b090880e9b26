"""Chat engine: continuous (iteration-level) batching with token streaming, on one scheduler thread.

Which approach, and why: our own small scheduler over transformers' `DynamicCache`, not transformers'
continuous batching. Measured on this CPU (shared FACTS, SmolLM2-135M fp32, 2 threads): a static batch
of 16 decodes ≈64 tokens/s, transformers' `generate_batch` ≈35 and `transformers serve
--continuous-batching` ≈50 at 16 streams (its paged-attention bookkeeping costs more than it saves on
CPU). Decoding a left-padded batch through the model's ordinary forward keeps the static batch's speed,
and re-forming that batch at every step gives iteration-level scheduling: a request joins at the next
step (after its own prefill) and leaves the step it finishes, without waiting for the others.

One scheduler iteration, named as the steps (`generation/scheduler.py`):
    admit       take waiting requests into free slots (FIFO; cancelled and expired ones are dropped)
    prefill     a left-padded forward over the admitted prompts -> their first tokens + KV cache, merged into
                the running batch (left-pad the shorter side); in chunks while other rows decode, and from a
                kept prefix's KV when every prompt starts with one
    decode step one forward of every running row's newest token, against the shared cache
    emit        detokenize incrementally, apply stop strings / EOS / max_tokens, hand deltas to each consumer
    retire      drop finished, cancelled and timed-out rows from the batch; trim all-padding columns

This module is the public face (`ChatEngine`: submit and its checks, load gauges, health, warmup,
start/stop). The parts live in `serving/engines/generation/`, one concern each, each unit-tested alone
(tests/code/test_chat_parts.py):
    batch.py        `Batch`: KV cache, mask (B, L), next tokens (B, 1) and rows as one value; `merge`, `select`
    forward.py      the two forwards on a `Batch` (`prefill`, whole or chunked, and `decode`) and `warm_up`
    prefix_cache.py the KV of prompt beginnings requests share (system prompt, tools, RAG instructions), reused
    sampling.py     per-row chain (grammar mask, penalties, temperature, top-p), seeded draws, logprobs; argmax
    grammar.py      constrained decoding (llguidance): a request's JSON schema or grammar as its mask step
    detokenizer.py  incremental detokenizer (prefix/read offsets) holding back stop-string prefixes and U+FFFD
    request.py      one request's state (`Request`: emit, timeouts) and the caller's `GenerationHandle`
    waiting.py      the bounded FIFO between `submit` and admit, with the stop signal
    scheduler.py    `Scheduler`: the loop above, owning the batch; OOM preemption (recompute), failed steps
    health.py       unhealthy = the thread died, or `max_failed_steps` consecutive failed steps

Health: unhealthy once the scheduler thread exits other than by `stop()`, or after `max_failed_steps`
consecutive steps failed with an error other than out-of-memory; `submit` then refuses work with
`Overloaded`. `observer.load` hears the running/waiting counts whenever they change.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.device import MemoryBackoff
from core.errors import Overloaded
from core.tool_calls import template_for
from serving.engines.generation.detokenizer import TokenTexts
from serving.engines.generation.forward import warm_up
from serving.engines.generation.grammar import GrammarMask, Grammars
from serving.engines.generation.health import StepHealth
from serving.engines.generation.prefix_cache import PrefixCache, PrefixStats
from serving.engines.generation.request import GenerationHandle, Request, check_fits
from serving.engines.generation.sampling import GREEDY, RowSampler, sample
from serving.engines.generation.scheduler import Scheduler
from serving.engines.generation.waiting import WaitingQueue
from serving.engines.types import EngineHealth, EngineObserver, SamplingParams

__all__ = ["ChatEngine", "GenerationHandle"]


class ChatEngine:
    """Continuous-batching generation over a causal LM (see the module docstring)."""

    name = "chat"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        max_context_tokens: int = 2048,
        timeout_s: float = 120.0,
        retry_after_s: int = 1,
        observer: EngineObserver | None = None,
        max_failed_steps: int = 8,
        prefill_chunk_tokens: int = 0,
        prefix_cache_tokens: int = 0,
        decode_threads: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.window = min(max_context_tokens, int(getattr(model.config, "max_position_embeddings", 2048)))
        self.timeout_s, self.retry_after_s = timeout_s, retry_after_s
        self.observer = observer or EngineObserver()
        self.backoff = MemoryBackoff(max_batch_size)  # running-slot limit: halved on out-of-memory
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        self.token_texts = TokenTexts(tokenizer)  # shared: its cache of token texts serves every request
        self._health = StepHealth(max_failed_steps)
        self._waiting = WaitingQueue(max_queue, on_change=self._report_load)
        self._scheduler = Scheduler(
            model, self._waiting, name=self.name, pad_id=self.pad_id, eos_ids=self.eos_ids, window=self.window,
            timeout_s=timeout_s, retry_after_s=retry_after_s, backoff=self.backoff, health=self._health,
            observer=self.observer, report_load=self._report_load, prefill_chunk_tokens=prefill_chunk_tokens,
            prefixes=PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None, decode_threads=decode_threads,
        )  # fmt: skip
        self._thread: threading.Thread | None = None
        self._load_lock = threading.Lock()
        self._reported: tuple[int, int] | None = None

    # ---- public API (event-loop side) ------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (idempotent)."""
        if self._thread is None:
            self._waiting.reopen()
            self._health.reset()
            self._thread = threading.Thread(target=self._scheduler.run, name="chat-engine", daemon=True)
            self._thread.start()
            self._report_load()  # the gauges exist (at 0) from the start, not from the first request

    def stop(self) -> None:
        """Stop the scheduler; requests still queued or running fail with `Overloaded`."""
        self._waiting.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def encode_messages(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt token ids: the chat template with the assistant turn opened.

        With tools offered, or tool calls and results in the history, a template that knows tools renders
        them: the model's own if it has one, else the project's (core/chat_template.jinja, core/tool_calls.py).
        """
        uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
        template = template_for(self.tokenizer.chat_template) if uses_tools else None
        listed: Any = tools
        enc: Any = self.tokenizer.apply_chat_template(
            messages, tools=listed, chat_template=template, add_generation_prompt=True, tokenize=True
        )
        ids = enc["input_ids"] if not isinstance(enc, list) else enc
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def submit(self, prompt: list[int], params: SamplingParams) -> GenerationHandle:
        """Check the request and queue it; cheap, no model work.

        Raises:
            InvalidRequest / ContextLengthExceeded: empty prompt, prompt + max_tokens over the window, or a
                constraint that does not compile (the message names the problem).
            QueueFull: the queue is at its bound.
            Overloaded: the engine is not running, or unhealthy (the message says why).
        """
        check_fits(prompt, params, self.window)
        health = self.health()
        if self._thread is None or not health.healthy:
            why = health.reason or "it is not running"
            raise Overloaded(f"the chat engine cannot take requests: {why}", retry_after_s=self.retry_after_s)
        grammar = self.constrain(params)
        req = Request(
            prompt, params, tokenizer=self.tokenizer, sampler=RowSampler.from_params(params, self.device, grammar),
            loop=asyncio.get_running_loop(), deadline=time.monotonic() + self.timeout_s, token_texts=self.token_texts,
        )  # fmt: skip
        free_slots = max(self.limit - self._running(), 0)
        self._waiting.put(req, free_slots=free_slots, retry_after_s=self.retry_after_s)
        return GenerationHandle(req, self._cancel, self.timeout_s)

    @cached_property
    def grammars(self) -> Grammars:
        """The constraint compiler for this tokenizer (built on first use, or by `warmup`: ~0.5 s)."""
        return Grammars(self.tokenizer, self.eos_ids)

    def constrain(self, params: SamplingParams) -> GrammarMask | None:
        """The request's grammar state at its start (None: unconstrained).

        Raises:
            InvalidRequest: the constraint does not compile; the message names the problem.
        """
        if params.constraint is None:
            return None
        return self.grammars.matcher(self.grammars.compile(params.constraint))

    @property
    def limit(self) -> int:
        """Requests decoded together now: `max_batch_size`, or less after an out-of-memory step."""
        return self.backoff.value

    def load(self) -> dict[str, int]:
        """Running (incl. being prefilled) and waiting request counts, and the slot limit."""
        return {"running": self._running(), "waiting": len(self._waiting), "limit": self.limit}

    def prefix_stats(self) -> PrefixStats | None:
        """Prefix caching so far: prefills that reused a kept prefix, the prompt tokens they skipped, prefixes kept
        (None: prefix caching is off)."""
        prefixes = self._scheduler.prefixes
        return None if prefixes is None else prefixes.stats

    def health(self) -> EngineHealth:
        """Unhealthy once the scheduler thread died, or after `max_failed_steps` consecutive failed steps."""
        thread = self._thread
        return self._health.check(thread is not None and not thread.is_alive() and not self._waiting.stopping)

    def warmup(self) -> None:
        """Run the scheduler's own prefill, merge, decode and select once, and build the grammar compiler; works
        before `start()`."""
        _ = self.grammars
        prompts = [self.encode_messages([{"role": "user", "content": c}]) for c in ("Hi", "Say hello in French.")]
        warm_up(self.model, prompts, self.pad_id, lambda logits, rows: sample(logits, [GREEDY] * len(rows)))

    def _cancel(self, req: Request) -> None:
        if not req.done:
            req.cancelled = True  # a running row is retired at the next iteration
            if self._waiting.remove(req):  # a waiting one leaves the queue now
                req.done = True

    def _running(self) -> int:
        return self._scheduler.running

    def _report_load(self) -> None:
        with self._load_lock:
            counts = (self._running(), len(self._waiting))
            if counts != self._reported:
                self._reported = counts
                self.observer.load(self.name, *counts)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a generation: the generation config's and the tokenizer's EOS."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (gen_eos, tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, Sequence):
            ids.update(int(x) for x in v)
    return ids
