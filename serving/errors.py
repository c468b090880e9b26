"""Domain errors of the serving core, and the ONE translation to an HTTP status and OpenAI error body.

Engines and services raise these (they know nothing of HTTP); the edge (`serving/http.py`) calls
`to_openai_error` once. Any other exception reaching the edge is a bug: 500 with a generic message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ServingError(Exception):
    """Base of every error a client can cause or must be told about."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(ServingError):
    """The request is well-formed JSON but asks for something invalid (names the field and why)."""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    """Prompt + max_tokens (or an embedding input) exceeds the model's window; never truncated silently."""

    code = "context_length_exceeded"


class Unauthorized(ServingError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class ModelNotFound(ServingError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class PayloadTooLarge(ServingError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class RateLimited(ServingError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class QueueFull(ServingError):
    """The engine's queue is at its bound: retry later."""

    status, type, code = 429, "rate_limit_error", "queue_full"


class Overloaded(ServingError):
    """The engine cannot take work now (out of memory, not ready): retry later."""

    status, type, code = 503, "server_error", "overloaded"


class RequestTimeout(ServingError):
    status, type, code = 504, "timeout_error", "timeout"


class StartupError(RuntimeError):
    """The server cannot start (registry, cache or index mismatch); the message says what to fix."""


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def to_openai_error(exc: BaseException) -> HttpError:
    """Map any exception to a status, an OpenAI error body and headers (the only such mapping)."""
    if isinstance(exc, ServingError):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
        body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
        return HttpError(exc.status, body, headers)
    body = {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}}
    return HttpError(500, body)


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
