"""The HTTP edge: the FastAPI app BentoML mounts, error translation, responses, SSE, auth, limits, logs.

Everything protocol-level that is not one endpoint's business lives here: the one place exceptions
become HTTP responses (via `serving.errors.to_openai_error`), the one place a handler's result becomes
a response (`respond`: JSON, or SSE for an `EventStream`), request-size limits, API keys and per-key
rate limits, request ids, the per-request log line (a `RequestRecord` the handler fills) and metrics.

Hot routes can be answered by the edge itself (`direct_post`): the body parsed straight into its pydantic schema
and the handler called, without FastAPI's routing, request object and dependency solving in between, with the
same limits, logs, metrics and errors as every other route.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import PayloadTooLarge, RateLimited, ServingError, Unauthorized
from core.log import get_logger
from serving.errors import from_validation_errors, to_anthropic_error, to_error, to_openai_error
from serving.handlers.base import Event, EventStream, RequestRecord
from serving.settings import Settings

log = get_logger("serving.requests")

OnRequest = Callable[[str, int, float, dict[str, float]], None]
"""Called once per request as it ends: route, status, seconds, and the stages it timed (ms; `RequestRecord.stages`)."""

KNOWN_ROUTES = (
    "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/search", "/v1/rag", "/v1/status", "/v1/rerank",
    "/v1/messages", "/v1/messages/count_tokens", "/v1/completions", "/v1/tokenize", "/v1/detokenize",
    "/tokenize", "/detokenize",
)  # fmt: skip
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DirectHandler = Callable[[bytes, RequestRecord], Awaitable[Response]]
"""A route the edge answers itself (`direct_post`): the request body and its record in, the response out."""
Route = Callable[[M, RequestRecord], Awaitable[Response]]
"""A `direct_post` route as written: the validated body and the request's record in, the response out."""

CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never seen by the client


async def cancel_on_disconnect(request: Request, work: Awaitable[T], poll_s: float = 0.25) -> T | Response:
    """Await `work`, cancelling it if the client goes away first.

    Starlette cancels a streaming response when its client disconnects, but not a plain handler that is
    still computing: a non-streaming chat request would keep its generation slot until it finished.
    Cancelling the task raises CancelledError at the handler's `await`, which reaches the engine and
    frees the slot, as it does for streams.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                log.info("client disconnected; request cancelled path=%s", request.url.path)
                return Response(status_code=CLIENT_CLOSED)
    finally:
        if not task.done():
            task.cancel()


def error_response(exc: BaseException, path: str = "") -> JSONResponse:
    """The error's status and body, in the dialect of the route (`serving.errors.to_error`)."""
    err = to_error(exc, path)
    if err.status >= 500 and not isinstance(exc, ServingError):
        log.error("unhandled error: %r", exc, exc_info=exc)
    return JSONResponse(err.body, status_code=err.status, headers=err.headers)


def respond(result: BaseModel | EventStream | Response) -> Response:
    """A handler's result as a response: JSON for a model, SSE for an event stream.

    A `Response` passes through (a request whose client left: `cancel_on_disconnect`).
    """
    if isinstance(result, Response):
        return result
    if isinstance(result, EventStream):
        # The background task runs when the response ends however it ends, also when the client left
        # before the first event (the iterator never started): the stream's resources are freed either way.
        return StreamingResponse(
            sse_stream(result.events) if result.dialect == "openai" else anthropic_sse_stream(result.events),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            background=BackgroundTask(result.on_close),
        )
    # pydantic-core writes the JSON itself: an embeddings answer is hundreds of floats, and the
    # dict + json.dumps route cost ~10% of the event loop's time at 64 clients (py-spy).
    return Response(result.model_dump_json(exclude_none=True), media_type="application/json")


def sse(payload: Event) -> str:
    """One server-sent event in the OpenAI framing (`data: {...}` and a blank line)."""
    body = payload.model_dump_json(exclude_none=True) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {body}\n\n"


async def anthropic_sse_stream(events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """Frame Anthropic's events (`event: <type>` then `data: {...}`); an error after the start is an `error` event."""
    try:
        async for event in events:
            body = event.model_dump(exclude_none=True) if isinstance(event, BaseModel) else event
            yield f"event: {body['type']}\ndata: {json.dumps(body)}\n\n"
    except Exception as e:
        yield f"event: error\ndata: {json.dumps(to_anthropic_error(e).body)}\n\n"
        if not isinstance(e, ServingError):
            log.error("stream failed: %r", e, exc_info=e)


async def sse_stream(events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """Frame events as SSE and end with `data: [DONE]`.

    An error after the response has started cannot change the status any more: it is sent as an error
    event (the openai SDK raises it as an APIError) and the stream ends without [DONE].
    Cancellation (client gone) is not caught: it must reach the engine to free the slot.
    """
    try:
        async for event in events:
            yield sse(event)
    except Exception as e:
        yield sse(to_openai_error(e).body)
        if not isinstance(e, ServingError):
            log.error("stream failed: %r", e, exc_info=e)
        return
    yield "data: [DONE]\n\n"


class RateLimiter:
    """Token bucket per client key: `per_minute` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float | None:
        """Take one token for `key`; None if granted, else seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def parse_body(schema: type[M], body: bytes) -> M:
    """`body` (JSON) as `schema`, validated by pydantic-core in one pass.

    Raises:
        InvalidRequest: not JSON, or not a valid `schema`: the same 400 naming the field that FastAPI's validation
            gives (`serving.errors.from_validation_errors`).
    """
    try:
        return schema.model_validate_json(body)
    except ValidationError as e:
        raise from_validation_errors(list(e.errors())) from None  # type: ignore[arg-type]


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def direct_post(app: FastAPI, path: str, schema: type[M]) -> Callable[[Route[M]], Route[M]]:
    """Register the decorated `(body, record) -> Response` coroutine to answer POST `path` (the full path, e.g.
    `/v1/embeddings`) in `app`'s edge itself, its body parsed as `schema` (`parse_body`).

    Why: 64 single-text embedding clients spent ~40% of the worker's busy time in the HTTP stack, as much as in
    the model (py-spy, README "Embeddings"); FastAPI's part of it (route matching, the `Request`, dependency
    solving, JSON to dict to model) is skipped, BentoML's and the edge's (auth, limits, logs, metrics) stay.
    """
    table: dict[str, DirectHandler] = app.state.direct_routes

    def register(fn: Route[M]) -> Route[M]:
        async def answer(body: bytes, record: RequestRecord) -> Response:
            return await fn(parse_body(schema, body), record)

        table[path] = answer
        return fn

    return register


class EdgeMiddleware:
    """Pure ASGI (streams and client disconnects pass through untouched, unlike BaseHTTPMiddleware)."""

    def __init__(
        self, app: ASGIApp, settings: Settings, on_request: OnRequest, direct: dict[str, DirectHandler] | None = None
    ) -> None:
        self.app = app
        self.settings = settings.serving
        self.on_request = on_request
        self.limiter = RateLimiter(self.settings.rate_limit_per_minute) if self.settings.rate_limit_per_minute else None
        self.direct = direct if direct is not None else {}  # filled by `direct_post`, maybe after this is built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex[:16]
        path = scope.get("root_path", "") + scope["path"] if not scope["path"].startswith("/v1") else scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        record = RequestRecord()
        scope.setdefault("state", {})["record"] = record
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
                if record.model and record.version:  # which registry version answered (a rollout changes it)
                    message["headers"].append((b"x-model-version", f"{record.model}/{record.version}".encode()))
                if stages := record.stages():  # W3C Server-Timing: browsers' dev tools show it per request
                    timing = ", ".join(f"{k};dur={v:.1f}" for k, v in stages.items())
                    message["headers"].append((b"server-timing", timing.encode()))
            await send(message)

        try:
            refusal = self._refuse(headers, scope)
            if refusal is not None:
                await error_response(refusal, path)(scope, receive, send_with_id)
                return
            direct = self.direct.get(path) if scope["method"] == "POST" else None
            if direct is not None:
                await self._answer(direct, path, record, scope, receive, send_with_id)
                return
            await self.app(scope, self._limited_receive(receive), send_with_id)
        finally:
            seconds = time.monotonic() - start
            self.on_request(route, status, seconds, record.stages())
            fields = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in record.fields().items())
            log.info(
                "request_id=%s route=%s status=%d latency_ms=%.1f %s",
                request_id,
                route,
                status,
                seconds * 1000,
                fields,
            )

    async def _answer(
        self, handler: DirectHandler, path: str, record: RequestRecord, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A `direct_post` route: read the body (within `max_body_bytes`), call, respond; errors as on any route."""
        response: Response
        try:
            body = await read_body(self._limited_receive(receive))
            response = Response(status_code=CLIENT_CLOSED) if body is None else await handler(body, record)
        except Exception as exc:  # every failure becomes its error body, as FastAPI's handlers below do
            response = error_response(exc, path)
        await response(scope, receive, send)

    def _refuse(self, headers: dict[str, str], scope: Scope) -> ServingError | None:
        key = None
        if self.settings.api_keys:
            auth = headers.get("authorization", "")
            # OpenAI clients send `Authorization: Bearer`, Anthropic's send `x-api-key`: either is accepted
            key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else headers.get("x-api-key")
            if key not in self.settings.api_keys:
                return Unauthorized(
                    "missing or invalid API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
                )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            return PayloadTooLarge(f"request body is {length} bytes; the limit is {self.settings.max_body_bytes}")
        if self.limiter is not None:
            client = key or (scope.get("client") or ("anonymous",))[0]
            wait = self.limiter.acquire(str(client))
            if wait is not None:
                return RateLimited(
                    f"rate limit of {self.settings.rate_limit_per_minute} requests/minute exceeded",
                    retry_after_s=max(1, round(wait + 0.5)),
                )
        return None

    def _limited_receive(self, receive: Receive) -> Receive:
        limit, seen = self.settings.max_body_bytes, 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body with no Content-Length
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        return wrapped


def create_app(settings: Settings, on_request: OnRequest) -> FastAPI:
    """The FastAPI app for the OpenAI-compatible routes (the routes themselves live in service.py)."""
    app = FastAPI(title="modelplatform OpenAI-compatible API", docs_url=None, redoc_url=None)
    app.state.direct_routes = {}  # `direct_post`'s table, shared with the edge

    @app.exception_handler(ServingError)
    async def _domain(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation_errors(list(exc.errors())), request.url.path)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, request.url.path)

    app.add_middleware(EdgeMiddleware, settings=settings, on_request=on_request, direct=app.state.direct_routes)
    return app
