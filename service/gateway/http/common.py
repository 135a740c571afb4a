"""What every route of the gateway's HTTP surface shares: this worker's gateway."""

from __future__ import annotations

from starlette.requests import Request

from service.errors import NotReady
from service.gateway.process import Gateway


def gateway_of(request: Request) -> Gateway:
    """This worker's gateway; 503 while its models are still loading."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise NotReady("the gateway is starting: models are still loading")
    return gateway
