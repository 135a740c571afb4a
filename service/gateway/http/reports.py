"""``GET /reports`` and ``/reports/{endpoint}/{variant}/{name}``: the monitor's Evidently reports
(HTML and JSON), listed (JSON for clients, the reports page for a browser) and served through the
gateway so operators need one address.

Reports show the distributions of what callers sent, so they need the admin token unless
``access.reports`` is ``anonymous``. Only names that pass the gateway's name rule (and a report
file name) are forwarded: never a path with ``.`` segments or encoded separators.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from monitors.reports import REPORT_NAME
from service.errors import NotFound
from service.gateway.http.common import gateway_of
from service.gateway.process import Gateway
from service.http.auth import client_of, require_token
from service.http.query import wants_html
from service.http.responses import PAGE_SECURITY_POLICY
from service.names import is_name


async def from_monitor(request: Request, path: str, what: str = "reports") -> Response:
    """The monitor's answer to this request's method on ``path`` (built from validated names
    only), passed through as it is."""
    gateway = gateway_of(request)
    if not gateway.recorder.enabled:
        raise NotFound(f"{what} need a monitor: set monitor.url (or monitor.urls) in gateway.yaml")
    status, content_type, body = await gateway.recorder.forward(
        request.method, path, client_of(request)
    )
    return Response(body, status_code=status, media_type=content_type.split(";")[0])


def _reader(request: Request) -> Gateway:
    gateway = gateway_of(request)
    if gateway.config.access.reports != "anonymous":
        require_token(
            request,
            gateway.secrets.admin_token,
            off="reports need the admin token (access.reports), which is not set",
        )
    return gateway


async def list_reports(request: Request) -> Response:
    """The monitor's listing (JSON), or for a browser its reports page (HTML)."""
    _reader(request)
    if not wants_html(request):
        return await from_monitor(request, "/reports")
    page = await from_monitor(request, "/reports?format=html")
    page.headers["content-security-policy"] = PAGE_SECURITY_POLICY
    return page


async def get_report(request: Request) -> Response:
    _reader(request)
    endpoint, variant, name = (request.path_params[k] for k in ("endpoint", "variant", "name"))
    if not (is_name(endpoint) and is_name(variant) and REPORT_NAME.fullmatch(name)):
        raise NotFound("no such report")
    return await from_monitor(request, f"/reports/{endpoint}/{variant}/{name}")
