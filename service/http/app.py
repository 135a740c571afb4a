"""The Starlette app BentoML mounts at ``/``: plain JSON predictions and OIP v2.

It is built once at import (BentoML mounts apps at class definition); each worker's ``Gateway`` is
attached to ``app.state.gateway`` when the BentoML service starts in that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import NotFound
from service.http import admin, oip, reports
from service.http.feedback import feedback
from service.http.predict import list_endpoints, predict
from service.http.responses import EXCEPTION_HANDLERS
from service.metrics import CONTENT_TYPE, exposition


async def metrics(request: Request) -> Response:
    """``/metrics``: every worker's series, summed (replaces BentoML's, which is switched off)."""
    content = await anyio.to_thread.run_sync(exposition)
    return Response(content, media_type=CONTENT_TYPE)


async def no_such_route(request: Request) -> None:
    """JSON 404 for unknown paths under the gateway's own prefixes (BentoML owns the rest)."""
    raise NotFound(f"no route {request.method} {request.url.path}")


def build_app() -> Starlette:
    routes = [
        Route("/predict/{endpoint}", predict, methods=["POST"]),
        Route("/endpoints", list_endpoints, methods=["GET"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/reports", reports.list_reports, methods=["GET"]),
        Route("/reports/{endpoint}/{variant}/{name}", reports.get_report, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *oip.ROUTES,
        *admin.ROUTES,
        Route("/v2/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/predict/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/admin/{rest:path}", no_such_route, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    return Starlette(
        routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=background_tasks
    )


@contextlib.asynccontextmanager
async def background_tasks(app: Starlette) -> AsyncIterator[None]:
    """While serving, follow the shared routing state and ship records to the monitor."""
    gateway = getattr(app.state, "gateway", None)
    tasks = []
    if gateway is not None:
        tasks.append(asyncio.create_task(gateway.routing.follow()))
        if gateway.recorder.enabled:
            tasks.append(asyncio.create_task(gateway.recorder.ship_forever()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
