"""``GET /reports`` and ``/reports/{endpoint}/{variant}/{name}``: the monitor's Evidently reports
(HTML and JSON), listed and served through the gateway so operators need one address."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from service.errors import NotFound
from service.http.common import gateway_of

SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


async def from_monitor(request: Request, path: str, what: str = "reports") -> Response:
    """The monitor's answer to this request's method on ``path``, passed through as it is."""
    gateway = gateway_of(request)
    if not gateway.recorder.enabled:
        raise NotFound(f"{what} need a monitor: set monitor.url in gateway.yaml")
    status, content_type, body = await gateway.recorder.forward(request.method, path)
    return Response(body, status_code=status, media_type=content_type.split(";")[0])


async def list_reports(request: Request) -> Response:
    return await from_monitor(request, "/reports")


async def get_report(request: Request) -> Response:
    parts = [request.path_params[k] for k in ("endpoint", "variant", "name")]
    if not all(SEGMENT.fullmatch(p) for p in parts):
        raise NotFound("no such report")
    return await from_monitor(request, "/reports/" + "/".join(parts))
