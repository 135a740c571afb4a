"""Errors the gateway answers with, each carrying its HTTP status.

Every failure a client can cause is raised as a ``GatewayError`` subclass; the HTTP layer turns it into
``{"error": message}`` with the status below. Anything else reaching the HTTP layer is a bug and is
answered 500 (and logged with its traceback).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of all client-visible errors: ``status`` is the HTTP status to answer with."""

    status: int = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(GatewayError):
    """The request is malformed or does not match the model's schema."""

    status = 400


class Unauthorized(GatewayError):
    """No credential, or a wrong one, for a route that needs one."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(GatewayError):
    """The route is switched off, or the caller may not do this without a token."""

    status = 403


class NotFound(GatewayError):
    """Unknown endpoint, model, version or route."""

    status = 404


class Conflict(GatewayError):
    """The request contradicts what is stored: a different label for the same request, a
    rollout action that does not fit the rollout's phase, a state that kept changing."""

    status = 409


class TooLate(GatewayError):
    """A reward that came after its experiment's join window: well-formed, but not counted."""

    status = 422


class PayloadTooLarge(GatewayError):
    """The body or the number of rows is over the configured limits."""

    status = 413


class UnsupportedEncoding(GatewayError):
    """A Content-Encoding the gateway does not take."""

    status = 415


class ClientGone(GatewayError):
    """The client closed the connection before its body was read (nginx's "client closed
    request"): nobody sees this answer, and it is counted as the client's doing."""

    status = 499


class Overloaded(GatewayError):
    """The model's queue is full: the client should retry after ``Retry-After`` seconds."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(GatewayError):
    """The model is not loaded (yet)."""

    status = 503


class Unavailable(GatewayError):
    """A dependency cannot take the request now (the monitor is away, its disk is full):
    nothing was stored; the client should retry after ``Retry-After`` seconds."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class InferenceFailed(GatewayError):
    """The model raised while running on inputs that passed validation: a model or runtime fault."""

    status = 500


class ConfigError(Exception):
    """The configuration or a model registration is invalid; the message names what is wrong."""
