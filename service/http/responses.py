"""JSON answers and the error handlers that turn every failure into ``{"error": message}``."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.errors import GatewayError

log = logging.getLogger("gateway.http")
JSON = "application/json"


def json_response(
    content: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(msgspec.json.encode(content), status, headers, media_type=JSON)


def _with_request_id(request: Request, headers: dict[str, str]) -> dict[str, str]:
    request_id = getattr(request.state, "request_id", None)
    return {**headers, "x-request-id": request_id} if request_id else headers


async def gateway_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, GatewayError)
    if error.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, error.message)
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
    return json_response({"error": "internal error; see the gateway log"}, 500, headers)


EXCEPTION_HANDLERS = {
    GatewayError: gateway_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
