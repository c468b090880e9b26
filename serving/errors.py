"""The edge's error table: each domain error (`core.errors`) as an HTTP status and an OpenAI error body.

This is the only place a status code is chosen. Engines and services raise `core.errors` classes and
know nothing of HTTP; `serving/http.py` calls `to_openai_error` once per failed request. Any other
exception reaching the edge is a bug: 500 with a generic message (internals are not leaked).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    RequestTimeout,
    ServingError,
    Unauthorized,
    UpstreamRejected,
    UpstreamUnavailable,
)


@dataclass(frozen=True)
class ErrorKind:
    """How one domain error looks on the wire."""

    status: int
    type: str
    """OpenAI's `error.type`."""
    code: str | None


# Most specific first is not needed: the lookup walks each error's MRO, so a subclass without its
# own row (a future `InvalidRequest` variant) gets its parent's.
OPENAI_ERRORS: dict[type[ServingError], ErrorKind] = {
    ServingError: ErrorKind(500, "server_error", None),
    InvalidRequest: ErrorKind(400, "invalid_request_error", "invalid_request"),
    ContextLengthExceeded: ErrorKind(400, "invalid_request_error", "context_length_exceeded"),
    Unauthorized: ErrorKind(401, "authentication_error", "invalid_api_key"),
    ModelNotFound: ErrorKind(404, "invalid_request_error", "model_not_found"),
    PayloadTooLarge: ErrorKind(413, "invalid_request_error", "payload_too_large"),
    RateLimited: ErrorKind(429, "rate_limit_error", "rate_limit_exceeded"),
    QueueFull: ErrorKind(429, "rate_limit_error", "queue_full"),
    Overloaded: ErrorKind(503, "server_error", "overloaded"),
    RequestTimeout: ErrorKind(504, "timeout_error", "timeout"),
    UpstreamUnavailable: ErrorKind(502, "upstream_error", "upstream_unavailable"),
    UpstreamRejected: ErrorKind(400, "invalid_request_error", "upstream_rejected"),  # its status: see kind_of
}
# An upstream's 4xx keeps its status; its type, when the upstream named none, follows OpenAI's by status.
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
_BUG = ErrorKind(500, "server_error", None)


def kind_of(exc: BaseException) -> ErrorKind:
    """The table row for an exception (its closest listed class), or the generic 500 for anything else; an
    upstream's refusal keeps the upstream's status."""
    if isinstance(exc, UpstreamRejected):
        kind = OPENAI_ERRORS[UpstreamRejected]
        return replace(kind, status=exc.status, type=exc.type or OPENAI_TYPES.get(exc.status, kind.type))
    for cls in type(exc).__mro__:
        if cls in OPENAI_ERRORS:
            return OPENAI_ERRORS[cls]
    return _BUG


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def to_openai_error(exc: BaseException) -> HttpError:
    """Map any exception to a status, an OpenAI error body and headers (the only such mapping)."""
    kind = kind_of(exc)
    if isinstance(exc, ServingError):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
        body = {"error": {"message": exc.message, "type": kind.type, "param": exc.param, "code": kind.code}}
        return HttpError(kind.status, body, headers)
    body = {"error": {"message": "internal server error", "type": kind.type, "param": None, "code": None}}
    return HttpError(kind.status, body)


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); 503 is our overload signal,
# where Anthropic's own API answers 529, which clients retry alike.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
}


def to_anthropic_error(exc: BaseException) -> HttpError:
    """The same mapping as `to_openai_error`, in Anthropic's body: `{"type": "error", "error": {type, message}}`."""
    err = to_openai_error(exc)
    message = err.body["error"]["message"]
    param = err.body["error"].get("param")
    if param and param not in message:
        message = f"{param}: {message}"
    body = {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(err.status, "api_error"), "message": message}}
    return HttpError(err.status, body, err.headers)


def to_error(exc: BaseException, path: str) -> HttpError:
    """The error in the dialect of the route family `path` belongs to (Anthropic's for /v1/messages...)."""
    return to_anthropic_error(exc) if is_anthropic(path) else to_openai_error(exc)


def is_anthropic(path: str) -> bool:
    return path.rstrip("/").endswith("/messages") or "/messages/" in path


def from_validation_errors(errors: list[dict[str, Any]]) -> InvalidRequest:
    """A pydantic/FastAPI validation error list as one InvalidRequest naming the first bad field."""
    parts = []
    param = None
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"`{where}`: {e.get('msg', 'invalid')}")
    return InvalidRequest("invalid request: " + "; ".join(parts), param=param)
