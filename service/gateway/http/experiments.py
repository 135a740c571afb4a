"""``/admin/experiments/...``: start and stop an endpoint's A/B experiment
(service/gateway/experiments.py), and read it out (the monitor computes the readout; the gateway
passes the call on). Every call needs the admin token.

- ``GET /admin/experiments``: every experiment in gateway.yaml, its status and verdict.
- ``GET /admin/experiments/{endpoint}``: the whole readout.
- ``POST /admin/experiments/{endpoint}/start``: a new window, with the arms' weights as they are.
- ``POST /admin/experiments/{endpoint}/stop``: the window ends; its readout stays.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from service.errors import NotFound
from service.gateway import experiments
from service.gateway.http.admin import authorized, endpoint_param
from service.gateway.http.reports import from_monitor
from service.http.auth import client_of
from service.http.responses import json_response

log = logging.getLogger("gateway.admin")
ACTIONS = {"start": experiments.start, "stop": experiments.stop}


async def list_experiments(request: Request) -> Response:
    authorized(request)
    return await from_monitor(request, "/experiments", "experiments")


async def read_out(request: Request) -> Response:
    authorized(request)
    endpoint = endpoint_param(request)
    return await from_monitor(request, f"/experiments/{endpoint}", "experiments")


async def act(request: Request) -> Response:
    gateway = authorized(request)
    endpoint, action = endpoint_param(request), request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown experiment action {action!r}; actions: {sorted(ACTIONS)}")
    client = client_of(request)
    state = await ACTIONS[action](gateway, endpoint, client)
    log.info("experiment on %s: %s by %s", endpoint, action, client)
    return json_response({"endpoint": endpoint, **state.to_dict()})


ROUTES = [
    HttpRoute("/admin/experiments", list_experiments, methods=["GET"]),
    HttpRoute("/admin/experiments/{endpoint}", read_out, methods=["GET"]),
    HttpRoute("/admin/experiments/{endpoint}/{action}", act, methods=["POST"]),
]
