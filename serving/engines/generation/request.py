"""One request inside the engine (`Request`) and what the caller holds (`GenerationHandle`).

The scheduler thread owns a `Request` once admitted and hands its deltas to the caller's event loop
through an `asyncio.Queue` fed with `call_soon_threadsafe`. A consumer that goes away (client
disconnect -> `CancelledError` at its `await`) cancels its request in a `finally`, and the next
scheduler iteration frees the slot.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

from transformers import PreTrainedTokenizerBase

from core.errors import ContextLengthExceeded, InvalidRequest, Overloaded, RequestTimeout
from serving.engines.generation.detokenizer import IncrementalDetokenizer, TokenTexts
from serving.engines.generation.sampling import RowSampler, TokenChoice
from serving.engines.types import Completion, EngineObserver, FinishReason, SamplingParams, TokenDelta, TokenLogprob

_ids = itertools.count()


def check_fits(prompt: list[int], params: SamplingParams, window: int) -> None:
    """Refuse a request that cannot be answered, before any work.

    Raises:
        InvalidRequest: the prompt is empty.
        ContextLengthExceeded: prompt + max_tokens is over the context window (never truncated silently).
    """
    if not prompt:
        raise InvalidRequest("the prompt is empty", param="messages")
    if len(prompt) + params.max_tokens > window:
        raise ContextLengthExceeded(
            f"this model's context window is {window} tokens; the messages take {len(prompt)} and max_tokens "
            f"asks for {params.max_tokens} ({len(prompt) + params.max_tokens} in all): shorten the messages or "
            f"lower max_tokens",
            param="messages" if len(prompt) >= window else "max_tokens",
        )


def queue_timeout(timeout_s: float) -> RequestTimeout:
    """The deadline passed before the request got a slot."""
    return RequestTimeout(
        f"the request waited in the queue past its {timeout_s:g}s timeout; the server is busy, retry later"
    )


def generation_timeout(timeout_s: float) -> RequestTimeout:
    """The deadline passed while the answer was being generated."""
    return RequestTimeout(f"generation did not finish within the {timeout_s:g}s request timeout")


def out_of_memory_alone(context_tokens: int, retry_after_s: int) -> Overloaded:
    """Even alone in the batch the request ran out of memory (preemption cannot help it)."""
    return Overloaded(
        f"out of memory generating this request alone ({context_tokens} tokens in context); retry later, or "
        f"shorten the messages or lower max_tokens",
        retry_after_s=retry_after_s,
    )


class Request:
    """One generation's state: prompt, what it generated, its sampler and detokenizer, its consumer's queue."""

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        *,
        tokenizer: PreTrainedTokenizerBase,
        sampler: RowSampler,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        token_texts: TokenTexts | None = None,
    ) -> None:
        self.id = next(_ids)
        self.prompt = prompt
        self.params = params
        self.sampler = sampler
        self.detokenizer = IncrementalDetokenizer(tokenizer, params.stop)
        self.token_texts = token_texts or TokenTexts(tokenizer)
        self.loop = loop
        self.queue: asyncio.Queue[TokenDelta | BaseException] = asyncio.Queue()
        self.deadline = deadline
        self.enqueued_at = time.monotonic()
        self.admitted_at: float | None = None  # set once; a preempted request keeps its first admission
        self.last_emit_at: float | None = None
        self.generated: list[int] = []
        self.cancelled = False
        self.done = False

    @property
    def context(self) -> list[int]:
        """What a prefill must run: the prompt plus what was generated (a preempted request resumes)."""
        return self.prompt + self.generated

    def advance(self, token: int, *, eos: bool, window: int) -> TokenDelta:
        """Account one sampled token and return the delta to send; `finish_reason` is set on the last.

        Args:
            token: the sampled token id.
            eos: whether it ends the sequence (it is then not part of the answer).
            window: the context window; reaching it ends the answer with "length".
        """
        reason: FinishReason | None = None
        chosen = self.sampler.logprobs.take() if self.sampler.logprobs is not None else ()
        if eos and not self.params.ignore_eos:
            reason, text = "stop", self.detokenizer.flush()
            chosen = ()  # the end-of-sequence token is not part of the answer
        else:
            self.generated.append(token)
            text = self.detokenizer.push(token)
            full = len(self.generated) >= self.params.max_tokens or len(self.context) >= window
            if not self.detokenizer.stopped and full:
                reason, text = "length", text + self.detokenizer.flush()
            if self.detokenizer.stopped:
                reason = "stop"
        matched = self.detokenizer.matched if reason is not None else None
        return TokenDelta(text, len(self.generated), len(self.prompt), reason, self._logprobs(chosen), matched)

    def _logprobs(self, chosen: tuple[TokenChoice, ...]) -> tuple[TokenLogprob, ...]:
        def one(token: int, logprob: float) -> TokenLogprob:
            text, raw = self.token_texts(token)
            return TokenLogprob(text, raw, logprob)

        return tuple(
            TokenLogprob(*self.token_texts(c.token), c.logprob, tuple(one(t, lp) for t, lp in c.top)) for c in chosen
        )

    def emit(self, token: int, *, eos: bool, window: int, observer: EngineObserver) -> bool:
        """`advance` by one token, time it, and send the delta to the consumer; whether the request finished."""
        now = time.monotonic()
        delta = self.advance(token, eos=eos, window=window)
        if self.last_emit_at is None:
            observer.first_token(now - self.enqueued_at)
        else:
            observer.inter_token(now - self.last_emit_at)
        self.last_emit_at = now
        if delta.finish_reason is not None:
            # Finished before the consumer hears of it: its slot counts as free from here on, so a client that
            # sends its next request the moment this answer arrives is never refused for the row's own slot.
            self.done = True
        self.deliver(delta)
        if delta.finish_reason is None:
            return False
        observer.tokens(len(self.prompt), len(self.generated))
        return True

    def deliver(self, item: TokenDelta | BaseException) -> None:
        """Hand an item to the consumer's event loop (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the request's event loop is gone: nobody is listening
            self.cancelled = True

    def fail(self, error: BaseException) -> None:
        """End the request with `error` (raised from its stream)."""
        self.done = True
        self.deliver(error)


class GenerationHandle:
    """What `ChatEngine.submit` returns: stream the deltas, or await the whole completion."""

    def __init__(self, request: Request, cancel: Callable[[Request], None], timeout_s: float) -> None:
        self._request = request
        self._cancel = cancel
        self._timeout_s = timeout_s
        self.prompt_tokens = len(request.prompt)

    async def stream(self) -> AsyncIterator[TokenDelta]:
        """Yield deltas until the one with a `finish_reason`.

        Raises:
            RequestTimeout: the request's deadline passed; the message says whether it was still queued
                (the server is busy) or generating. Its slot is freed.
            Overloaded: the engine failed the batch (e.g. out of memory) or stopped.
        """
        req = self._request
        try:
            while True:
                remaining = req.deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    item = await asyncio.wait_for(req.queue.get(), remaining)
                except TimeoutError:
                    raise self._timeout() from None
                if isinstance(item, RequestTimeout):
                    raise self._timeout()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Also reached on CancelledError (client gone) and GeneratorExit: free the slot, never swallow.
            self._cancel(req)

    def _timeout(self) -> RequestTimeout:
        # Our own deadline and the engine's may fire together; either way, say where the time went.
        if self._request.admitted_at is None:
            return queue_timeout(self._timeout_s)
        return generation_timeout(self._timeout_s)

    @property
    def queue_ms(self) -> float | None:
        """Time spent waiting for a slot (None while still waiting)."""
        r = self._request
        return None if r.admitted_at is None else round((r.admitted_at - r.enqueued_at) * 1000, 1)

    def cancel(self) -> None:
        """Free the slot (idempotent; a no-op once the generation has finished)."""
        self._cancel(self._request)

    async def result(self) -> Completion:
        """The whole answer once generated (raises what `stream` raises)."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        last: TokenDelta | None = None
        async for delta in self.stream():
            parts.append(delta.text)
            logprobs += delta.logprobs
            last = delta
        assert last is not None and last.finish_reason is not None
        return Completion(
            "".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens, tuple(logprobs),
            last.stop_sequence,
        )  # fmt: skip
