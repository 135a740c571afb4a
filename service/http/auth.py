"""Bearer tokens on the routes that need one, in both processes.

A missing or wrong token is a 401 (logged with the client's address, throttled so that a stream of
bad calls cannot flood the log); a route whose secret is not configured is a 403 saying which
secret turns it on. Tokens are compared in constant time (service/secrets.py).
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from service.errors import Forbidden, Unauthorized
from service.logs import Throttled
from service.secrets import presents

CLIENT_HEADER = "x-gateway-client"
"""The address of the caller a call the gateway passes on to the monitor came from (the monitor's
audit names it)."""

log = logging.getLogger("gateway.auth")
_refusals = Throttled(log, every_s=10.0)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require_token(request: Request, *accepted: str | None, off: str) -> None:
    """401 unless the request carries one of the ``accepted`` tokens; 403 with ``off`` (what to
    set) when none of them is configured."""
    if all(secret is None for secret in accepted):
        raise Forbidden(off)
    if not presents(request.headers, *accepted):
        _refusals.warning(
            "refused %s %s from %s: bad or missing token",
            request.method,
            request.url.path,
            client_of(request),
        )
        raise Unauthorized("a valid 'Authorization: Bearer <token>' is required")
