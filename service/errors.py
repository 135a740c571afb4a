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


class NotFound(GatewayError):
    """Unknown endpoint, model, version or route."""

    status = 404


class PayloadTooLarge(GatewayError):
    """The body or the number of rows is over the configured limits."""

    status = 413


class Overloaded(GatewayError):
    """The model's queue is full: the client should retry after ``Retry-After`` seconds."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(GatewayError):
    """The model is not loaded (yet)."""

    status = 503


class InferenceFailed(GatewayError):
    """The model raised while running on inputs that passed validation: a model or runtime fault."""

    status = 500


class ConfigError(Exception):
    """The configuration or a model registration is invalid; the message names what is wrong."""
