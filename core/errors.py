"""Domain errors: what went wrong, in words that say how to fix it, and nothing about HTTP.

Engines, services and the registry raise these; they carry a message, the request field at fault
(`param`) and, for load errors, when to retry. Which HTTP status and error body each becomes is decided
once, at the edge (`serving/errors.py`), the way text-embeddings-inference keeps its `core` free of
HTTP and converts in its `router`. A second API dialect maps the same classes to its own bodies.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error a client can cause or must be told about."""

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(ServingError):
    """The request is well-formed but asks for something invalid (names the field and why)."""


class ContextLengthExceeded(InvalidRequest):
    """Prompt + max_tokens (or an embedding input) exceeds the model's window; never truncated silently."""


class Unauthorized(ServingError):
    """No API key, or one this server does not know."""


class ModelNotFound(ServingError):
    """The request names a model this server does not serve."""


class PayloadTooLarge(ServingError):
    """The body, or the number of inputs in it, is over the configured limit."""


class RateLimited(ServingError):
    """This client used up its request budget; `retry_after_s` says when the next one is granted."""


class QueueFull(ServingError):
    """The engine's queue is at its bound: retry later."""


class Overloaded(ServingError):
    """The engine cannot take work now (out of memory, stopped, unhealthy): retry later."""


class RequestTimeout(ServingError):
    """The request's deadline passed (while queued, or while generating)."""


class UpstreamUnavailable(ServingError):
    """A hosted upstream model could not be reached, timed out or failed on its side: the gateway's 502."""


class UpstreamRejected(ServingError):
    """A hosted upstream model refused the request (a 4xx): passed on with its status, type and message."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, param=param, retry_after_s=retry_after_s)
        self.status = status
        self.type = type


class StartupError(RuntimeError):
    """The server cannot start (registry, cache or index mismatch); the message says what to fix."""


# ---- the model registry (core/registry.py) ----------------------------------------------------------
# Not ServingError subclasses: the pipeline raises them too, and each caller decides what one means
# (the register stage: no champion yet; the index stage: stop; serving: fall back to its cache, else
# StartupError).


class RegistryError(RuntimeError):
    """A model registry call failed; the message names the registry URI, the model and what to do."""


class RegistryUnreachable(RegistryError):
    """The registry cannot be reached: its database file does not exist, or its server does not answer."""


class AliasNotFound(RegistryError):
    """`name@alias` does not exist (no such registered model, or the alias was never set on it)."""


class VersionNotFound(RegistryError):
    """`name` has no such version (or no such registered model)."""
