"""Helpers every prediction route shares: the worker's gateway and the answer headers."""

from __future__ import annotations

from starlette.requests import Request

from service.errors import NotReady
from service.gateway import Gateway, request_id_from


def gateway_of(request: Request) -> Gateway:
    """This worker's gateway; 503 while its models are still loading."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise NotReady("the gateway is starting: models are still loading")
    return gateway


def assign_request_id(request: Request) -> str:
    """The request's id (the caller's ``x-request-id`` or a new one), kept for error answers too."""
    request_id = request.state.request_id = request_id_from(request.headers.get("x-request-id"))
    return request_id


def answer_headers(request_id: str, variant: str, model_version: str) -> dict[str, str]:
    """Headers every prediction answer carries, whatever its protocol."""
    return {
        "x-request-id": request_id,
        "x-gateway-variant": variant,
        "x-gateway-model-version": model_version,
    }
