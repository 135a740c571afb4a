"""JSON answers and the error handlers that turn every failure into ``{"error": message}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.errors import GatewayError, Unavailable
from service.logs import Throttled
from storage.database import StoreFull, StoreUnavailable

log = logging.getLogger("gateway.http")
JSON = "application/json"
PAGE_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
"""The Content-Security-Policy of the HTML pages the project itself renders: no script of any
kind runs, whatever a name or summary on them says."""


class AnswerResponse(Response):
    """A prediction's answer: Starlette's ``Response`` with its headers encoded in one pass.
    Every header of an answer is the gateway's own (plain ASCII names, never a content type or
    length), so Starlette's per-header checks and lower-casing are not needed: 1.4 us of the
    2.3 it takes to make one, on every request."""

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        raw.append((b"content-type", (self.media_type or JSON).encode("latin-1")))
        self.raw_headers = raw


def json_response(
    content: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(msgspec.json.encode(content), status, headers, media_type=JSON)


def _with_request_id(request: Request, headers: dict[str, str]) -> dict[str, str]:
    request_id = getattr(request.state, "request_id", None)
    return {**headers, "x-request-id": request_id} if request_id else headers


_server_errors: dict[str, Throttled] = {}
"""One throttled log per kind of server error: a failing dependency cannot flood the log."""


async def gateway_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, GatewayError)
    if error.status >= 500:
        _log_server_error(request, error, error.message)
    return _error_answer(request, error)


async def storage_error(request: Request, error: Exception) -> Response:
    """A store that cannot take the request now (unreachable, locked, full): 503, nothing was
    changed. The caller is told which; the driver's words go to the log (``StoreUnavailable``)."""
    assert isinstance(error, StoreUnavailable | StoreFull)
    _log_server_error(request, error, str(error))
    return _error_answer(request, Unavailable(f"{error.summary}; nothing was changed"))


def _log_server_error(request: Request, error: Exception, message: str) -> None:
    throttled = _server_errors.setdefault(type(error).__name__, Throttled(log, every_s=10.0))
    throttled.warning("%s %s: %s", request.method, request.url.path, message)


def _error_answer(request: Request, error: GatewayError) -> Response:
    headers = _with_request_id(request, error.headers)
    return json_response({"error": error.message}, error.status, headers)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed"}
    text = message.get(error.status_code, str(error.detail))
    return json_response({"error": text}, error.status_code, dict(error.headers or {}))


async def unexpected_error(request: Request, error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    headers = _with_request_id(request, {})
    return json_response({"error": "internal error; see the server's log"}, 500, headers)


EXCEPTION_HANDLERS = {
    GatewayError: gateway_error,
    StoreUnavailable: storage_error,
    StoreFull: storage_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


async def error_response(request: Request, error: Exception) -> Response:
    """The answer to ``error`` by the first handler for its class (as Starlette picks them), for
    calls that do not go through the app's own exception middleware (service/gateway/http/gate.py)."""
    for kind in type(error).__mro__:
        if kind in EXCEPTION_HANDLERS:
            return await EXCEPTION_HANDLERS[kind](request, error)
    return await unexpected_error(request, error)
