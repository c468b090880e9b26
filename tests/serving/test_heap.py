"""The serving worker's heap (serving/heap.py): frozen models freed when dropped, and BentoML's request timeout
keeping nothing of a finished request alive. No server: the middleware runs on a plain ASGI app."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from bentoml._internal.server.http import traffic

from serving import heap

# What BentoML's tracing middleware does before the timeout middleware runs: the request's span in the context.
SPAN: contextvars.ContextVar[object] = contextvars.ContextVar("span")


class _Span:
    pass


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _span_alive_after_request(middleware: type, app: Any = _answer, timeout: float = 3600) -> tuple[bool, list[Any]]:
    """Run one request through `middleware(app)` inside a span; whether the span outlives the request (checked while
    the loop, and its timers, still run), and the messages sent."""

    async def main() -> tuple[bool, list[Any]]:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        span = _Span()
        token = SPAN.set(span)
        await middleware(app, timeout=timeout)({"type": "http", "path": "/v1/embeddings"}, _receive, send)
        SPAN.reset(token)
        ref = weakref.ref(span)
        del span
        gc.collect()
        return ref() is not None, sent

    return asyncio.run(main())


def test_a_finished_request_leaves_nothing_for_the_timeout_to_hold() -> None:
    alive, sent = _span_alive_after_request(heap.TimeoutMiddleware)
    assert not alive
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_bentomls_own_timeout_still_holds_each_request_for_its_whole_timeout() -> None:
    """Why serving/heap.py replaces it: when this fails, BentoML fixed it and the replacement can go."""
    bentoml_own = heap.TimeoutMiddleware.__bases__[0]  # what BentoML builds without install()
    assert bentoml_own.__module__ == traffic.__name__
    alive, _ = _span_alive_after_request(bentoml_own)
    assert alive


def test_a_request_with_no_response_in_time_still_gets_504() -> None:
    async def never(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    _, sent = _span_alive_after_request(heap.TimeoutMiddleware, app=never, timeout=0.05)
    assert sent[0]["status"] == 504
    assert b"Not able to process the request" in sent[1]["body"]


def test_the_service_makes_bentoml_build_ours() -> None:
    import service  # noqa: F401  (installs at import, before BentoML builds the app in the worker)

    assert traffic.TimeoutMiddleware is heap.TimeoutMiddleware


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # this test process keeps collecting everything


class _Model:
    def __init__(self) -> None:
        self.me = self  # a cycle, as nn.Modules have: freed only by the collector, never by reference counts


def test_frozen_models_are_freed_by_collect_all_and_the_heap_refrozen(thawed: None) -> None:
    model = _Model()
    ref = weakref.ref(model)
    assert heap.freeze_heap() > 0
    del model
    gc.collect()
    assert ref() is not None, "frozen: out of the collector's reach"
    heap.collect_all()
    assert ref() is None
    assert gc.get_freeze_count() > 0, "what is alive now is frozen again"


def test_collect_all_freezes_nothing_when_nothing_was_frozen() -> None:
    gc.unfreeze()
    heap.collect_all()
    assert gc.get_freeze_count() == 0
