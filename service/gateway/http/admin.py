"""``/admin/...``: read and change routing, reload the config, read the audit log; read and steer
rollouts (passed on to the monitor, which decides them).

Every call needs ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>``; with no token configured the
admin API is off (403). A wrong or missing token is 401 and is logged with the client's address;
tokens are compared in constant time. Changes go through ``RoutingControl.change``: validated, models loaded,
saved with compare-and-swap, audited, installed here at once and on the other workers within
``POLL_S``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from service.codecs import decode_json, is_finite_number
from service.config import VariantConfig, describe, load_config
from service.errors import BadRequest, ConfigError, NotFound
from service.gateway import experiments
from service.gateway.http.common import gateway_of
from service.gateway.http.reports import from_monitor
from service.gateway.process import Gateway
from service.http.auth import client_of, require_token
from service.http.body import read_body
from service.http.query import int_param
from service.http.responses import json_response
from service.names import checked_name
from service.state import from_config
from storage.database import StoreUnavailable
from traffic.rollout import ACTIONS
from traffic.store import RoutingState, Swap
from traffic.table import EndpointTable

log = logging.getLogger("gateway.admin")
MAX_ADMIN_BODY = 64 * 1024


def authorized(request: Request) -> Gateway:
    gateway = gateway_of(request)
    require_token(
        request,
        gateway.secrets.admin_token,
        off="the admin API is off: set GATEWAY_ADMIN_TOKEN (or secrets.admin_token_file)",
    )
    return gateway


def endpoint_param(request: Request) -> str:
    return checked_name("the endpoint", request.path_params["endpoint"])


async def _json_object(request: Request) -> dict:
    body = await read_body(request, MAX_ADMIN_BODY)
    data = decode_json(body)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _table(tables: Mapping[str, EndpointTable], endpoint: str) -> EndpointTable:
    if endpoint not in tables:
        raise BadRequest(f"unknown endpoint {endpoint!r}; endpoints: {sorted(tables)}")
    return tables[endpoint]


def _changing(
    endpoint: str, change: Callable[[EndpointTable], EndpointTable]
) -> Callable[[RoutingState], dict[str, EndpointTable]]:
    """What ``RoutingControl.change`` applies to make one endpoint's table ``change(table)``
    (a 400 for an endpoint the routing does not have)."""

    def changed(state: RoutingState) -> dict[str, EndpointTable]:
        return {**state.tables, endpoint: change(_table(state.tables, endpoint))}

    return changed


def _routing_view(gateway: Gateway) -> dict:
    snapshot = gateway.dataplane.snapshot
    return {
        "version": snapshot.version,
        "endpoints": {name: table.to_dict() for name, table in snapshot.tables.items()},
    }


async def _changed(
    gateway: Gateway, client: str, swap: Swap, status: int = 200, **extra
) -> Response:
    """The routing as it is after a change (``changed``: false when it was so already, and no
    version was made), with a warning for each running experiment whose arms it moved
    (service/gateway/experiments.py)."""
    view = {**_routing_view(gateway), "changed": swap.after is not None, **extra}
    warnings = await experiments.note_routing_changes(gateway, client, swap.before)
    if warnings:
        view["warnings"] = warnings
        for warning in warnings:
            log.warning("%s (by %s)", warning, client)
    return json_response(view, status=status)


async def read_routing(request: Request) -> Response:
    """The routing as stored, a change made through another worker a moment ago included; while
    the store cannot be read, as this worker serves it."""
    gateway = authorized(request)
    with contextlib.suppress(StoreUnavailable):
        await gateway.routing.refresh()
    return json_response(_routing_view(gateway))


async def set_weights(request: Request) -> Response:
    gateway = authorized(request)
    endpoint = endpoint_param(request)
    weights = (await _json_object(request)).get("weights")
    if (
        not isinstance(weights, dict)
        or not weights
        or not all(is_finite_number(w) for w in weights.values())
    ):
        raise BadRequest('the body must be {"weights": {"variant": number, ...}}')
    for name in weights:
        checked_name("a variant", name)

    client = client_of(request)
    swap = await gateway.routing.change(
        client,
        "set_weights",
        endpoint,
        {"weights": weights},
        _changing(endpoint, lambda table: table.with_weights(weights)),
    )
    return await _changed(gateway, client, swap)


async def add_variant(request: Request) -> Response:
    """Add a variant (default: a candidate at weight 0). Its model loads before it gets traffic."""
    gateway = authorized(request)
    endpoint = endpoint_param(request)
    data = await _json_object(request)
    try:
        variant = VariantConfig.model_validate({"role": "candidate", "weight": 0, **data})
    except ValidationError as error:
        raise BadRequest(describe(error, "variant")) from None
    if variant.faults is not None:
        raise BadRequest("faults can only be set in gateway.yaml")
    spec = variant.spec()

    client = client_of(request)
    swap = await gateway.routing.change(
        client,
        "add_variant",
        endpoint,
        spec.to_dict(),
        _changing(endpoint, lambda table: table.with_variant(spec)),
    )
    return await _changed(gateway, client, swap, status=201)


async def remove_variant(request: Request) -> Response:
    gateway = authorized(request)
    endpoint = endpoint_param(request)
    name = checked_name("the variant", request.path_params["variant"])

    client = client_of(request)
    swap = await gateway.routing.change(
        client,
        "remove_variant",
        endpoint,
        {"variant": name},
        _changing(endpoint, lambda table: table.without_variant(name)),
    )
    return await _changed(gateway, client, swap)


async def reload_config(request: Request) -> Response:
    """Re-read gateway.yaml and make the endpoints it changed the routing state (service/state.py
    ``from_config``: the others keep what changed at run time); everything else needs a restart,
    and the answer says which parts differ, and which endpoints it took from the file."""
    gateway = authorized(request)
    path = gateway.config_path
    try:
        config = load_config(path)
    except ConfigError as error:
        raise BadRequest(str(error)) from None
    changed = gateway.config.not_reloadable(config)
    client = client_of(request)
    detail: dict = {"config": str(path), "restart_required": changed}

    def mutate(state):
        tables, detail["from_file"] = from_config(config, state)
        return tables

    swap = await gateway.routing.change(
        client,
        "reload",
        "*",
        detail,
        mutate,
        source=config.routing_hash(),
        declared=config.tables(),
    )
    return await _changed(
        gateway, client, swap, restart_required=changed, from_file=detail["from_file"]
    )


async def read_audit(request: Request) -> Response:
    gateway = authorized(request)
    limit = int_param(request, "limit", 100, 1, 10_000)
    entries = await anyio.to_thread.run_sync(gateway.routing.store.audit, limit)
    return json_response(
        {
            "entries": [
                {
                    "at": e.at,
                    "client": e.client,
                    "action": e.action,
                    "endpoint": e.endpoint,
                    "detail": e.detail,
                }
                for e in entries
            ]
        }
    )


async def rollouts(request: Request) -> Response:
    """Every rollout's state (the monitor decides rollouts; the gateway passes the call on)."""
    authorized(request)
    return await from_monitor(request, "/rollouts", "rollouts")


async def rollout(request: Request) -> Response:
    """One rollout's state, policy and history (``?history=N`` evaluations)."""
    authorized(request)
    endpoint = endpoint_param(request)
    history = int_param(request, "history", 50, 0, 10_000)
    return await from_monitor(request, f"/rollouts/{endpoint}?history={history}", "rollouts")


async def rollout_action(request: Request) -> Response:
    """Pause, resume, approve, promote, roll back or start a rollout by hand."""
    authorized(request)
    endpoint, action = endpoint_param(request), request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown rollout action {action!r}; actions: {list(ACTIONS)}")
    log.info("rollout %s of %s requested by %s", action, endpoint, client_of(request))
    return await from_monitor(request, f"/rollouts/{endpoint}/{action}", "rollouts")


ROUTES = [
    HttpRoute("/admin/routing", read_routing, methods=["GET"]),
    HttpRoute("/admin/endpoints/{endpoint}/weights", set_weights, methods=["PUT"]),
    HttpRoute("/admin/endpoints/{endpoint}/variants", add_variant, methods=["POST"]),
    HttpRoute("/admin/endpoints/{endpoint}/variants/{variant}", remove_variant, methods=["DELETE"]),
    HttpRoute("/admin/reload", reload_config, methods=["POST"]),
    HttpRoute("/admin/audit", read_audit, methods=["GET"]),
    HttpRoute("/admin/rollouts", rollouts, methods=["GET"]),
    HttpRoute("/admin/rollouts/{endpoint}", rollout, methods=["GET"]),
    HttpRoute("/admin/rollouts/{endpoint}/{action}", rollout_action, methods=["POST"]),
]
