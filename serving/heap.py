"""What the garbage collector walks in the serving worker: the loaded models frozen out of it, and no per-request
objects kept alive after the response.

Measured (2026-12-01, 64 wrk clients, one text each, 20 s runs against the served ONNX embedder; a `gc.callbacks`
probe timing every collection): the worker ran a full (generation-2) collection every 3.5-6 s under load, and each
took 450-730 ms, growing with the run. In that time no request moves, so ~2.5% of requests took 0.5-1 s and the p99
was 665-880 ms while the p50 was ~120 ms. Two causes, both fixed here:

1. ~1 million long-lived objects (the models' modules, tokenizers, pydantic schemas) are walked by every full
   collection and never freed. `freeze_heap()` moves them to the permanent generation once the models are loaded
   and warm (`gc.freeze()`, as vLLM does after start-up). The full collections then walk only what came after.
2. BentoML's `TimeoutMiddleware` (bentoml 1.4.40, `bentoml._internal.server.http.traffic`) schedules
   `loop.call_later(timeout, ...)` for every request and never cancels it. The timer keeps its callback's future and
   the request's context (with BentoML's OpenTelemetry span) alive for the whole `traffic.timeout` (150 s here,
   set above our own deadline in service.py): at 450 requests/s that is ~67,000 requests' objects, +25 objects each
   (objects in the heap grew from 1.00 M to 1.35 M in 40 s). `TimeoutMiddleware` below is BentoML's, with the timer
   cancelled once the response starts (after that it can only do nothing) and holding no copy of the request's
   context; `install()` puts it in BentoML's place.

With both: p99 151-163 ms and 521-530 texts/s, against 665-880 ms and 429-466 texts/s without (same server, same
runs; `python -m benchmarks.serving_throughput --skip-chat`). tests/serving/test_heap.py checks both.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from core.log import get_logger

log = get_logger(__name__)


def freeze_heap() -> int:
    """Collect, then move every object alive now out of the collector's reach; returns how many are frozen.

    Call when the models are loaded and warm. Frozen objects are never collected: before dropping objects that
    were alive at a freeze (a rollout retiring the previous models), collect with `collect_all()`.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap frozen: %d long-lived objects out of the garbage collector's full passes", frozen)
    return frozen


def collect_all() -> None:
    """A full collection that reaches frozen objects too (dropped models), frozen again after if the heap was."""
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    gc.collect()
    if frozen:
        freeze_heap()


class TimeoutMiddleware(traffic.TimeoutMiddleware):
    """BentoML's `traffic.timeout` (504 when no response has started in time), its timer cancelled when one has."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        # An empty context: the callback needs none, and a copy of the request's would keep its span alive
        # in the loop's timer queue until the handle is dropped (asyncio drops cancelled ones lazily).
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

        async def _send(message: Message) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()


def install() -> None:
    """Make BentoML build its timeout middleware from `TimeoutMiddleware` above (read when the app is built)."""
    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
