"""The Starlette app BentoML mounts at ``/``: plain JSON predictions and OIP v2.

It is built once at import (BentoML mounts apps at class definition); each worker's ``Gateway`` is
attached to ``app.state.gateway`` when the BentoML service starts in that worker.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from service import supervise
from service.errors import NotFound
from service.exposition import CONTENT_TYPE
from service.gateway.http import admin, experiments, oip, reports
from service.gateway.http.common import gateway_of
from service.gateway.http.feedback import feedback
from service.gateway.http.predict import explain, list_endpoints, predict
from service.http.auth import require_token
from service.http.responses import EXCEPTION_HANDLERS
from service.launch import HOST_ENV


async def metrics(request: Request) -> Response:
    """``/metrics``: every worker's series, summed (replaces BentoML's, which is switched off).
    Needs the metrics (or admin) token unless ``access.metrics`` is ``anonymous``."""
    gateway = gateway_of(request)
    if gateway.config.access.metrics != "anonymous":
        secrets = gateway.secrets
        require_token(
            request,
            secrets.metrics_token,
            secrets.admin_token,
            off="/metrics needs GATEWAY_METRICS_TOKEN (or access.metrics: anonymous)",
        )
    return Response(await gateway.metrics.recent_exposition(), media_type=CONTENT_TYPE)


async def no_such_route(request: Request) -> None:
    """JSON 404 for unknown paths under the gateway's own prefixes (BentoML owns the rest)."""
    raise NotFound(f"no route {request.method} {request.url.path}")


def build_app() -> Starlette:
    routes = [
        HttpRoute("/predict/{endpoint}", predict, methods=["POST"]),
        HttpRoute("/explain/{endpoint}", explain, methods=["POST"]),
        HttpRoute("/endpoints", list_endpoints, methods=["GET"]),
        HttpRoute("/feedback", feedback, methods=["POST"]),
        HttpRoute("/reports", reports.list_reports, methods=["GET"]),
        HttpRoute("/reports/{endpoint}/{variant}/{name}", reports.get_report, methods=["GET"]),
        HttpRoute("/metrics", metrics, methods=["GET"]),
        *oip.ROUTES,
        *admin.ROUTES,
        *experiments.ROUTES,
        HttpRoute("/v2/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
        HttpRoute("/predict/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
        HttpRoute("/explain/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
        HttpRoute("/admin/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    return Starlette(
        routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=background_tasks
    )


@contextlib.asynccontextmanager
async def background_tasks(app: Starlette) -> AsyncIterator[None]:
    """While serving, follow the shared routing state and ship records to the monitor (both
    supervised: started again, with a log line, if they ever die), and serve gRPC when
    ``server.grpc_port`` is set."""
    gateway = getattr(app.state, "gateway", None)
    tasks = []
    async with contextlib.AsyncExitStack() as stack:
        if gateway is not None:
            restarted = gateway.metrics.task_restarted
            tasks.append(supervise.start("routing follower", gateway.routing.follow, restarted))
            if gateway.routing.notifications_dsn is not None:
                listener = gateway.routing.listen
                tasks.append(supervise.start("routing listener", listener, restarted))
            if gateway.recorder.enabled:
                recorder = gateway.recorder.ship_forever
                tasks.append(supervise.start("record shipping", recorder, restarted))
            server = gateway.config.server
            if server.grpc_port is not None:
                from service.gateway.grpc.service import grpc_server  # grpcio: only when asked

                host = os.environ.get(HOST_ENV, server.host)  # where HTTP listens (--host)
                await stack.enter_async_context(grpc_server(gateway, host, server.grpc_port))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
