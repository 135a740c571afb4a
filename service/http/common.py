"""Helpers every prediction route shares: the worker's gateway and the answer headers."""

from __future__ import annotations

import os

from starlette.requests import Request

from service.errors import BadRequest, NotReady
from service.gateway import Gateway, request_id_from
from traffic.table import EndpointTable

PIN_HEADER = "x-gateway-variant"
WORKER = str(os.getpid())
MAX_KEY_LENGTH = 256


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
    """Headers every prediction answer carries, whatever its protocol (the worker helps support)."""
    return {
        "x-request-id": request_id,
        "x-gateway-variant": variant,
        "x-gateway-model-version": model_version,
        "x-gateway-worker": WORKER,
    }


def routing_key(request: Request, table: EndpointTable, body_fields: dict) -> str | None:
    """The request's routing key: from the configured header, or the configured body field."""
    policy = table.policy
    if policy.key_header:
        key = request.headers.get(policy.key_header)
    elif policy.key_field:
        key = body_fields.get(policy.key_field)
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
            raise BadRequest(f"routing key {policy.key_field!r} must be a string or an integer")
        key = None if key is None else str(key)
    else:
        return None
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"the routing key must be 1-{MAX_KEY_LENGTH} characters")
    return key


def pinned_variant(request: Request) -> str | None:
    """The variant the caller pins with ``x-gateway-variant``, if any."""
    return request.headers.get(PIN_HEADER)
