"""Workarounds for BentoML 1.4 behaviours, applied when a gateway or monitor service is imported.

1. Metrics directory: BentoML keeps every server's metric files in one directory under its home and
   empties it whenever a server starts, so a second server on the same home (a monitor beside a
   gateway, two gateways, the tests) wipes the first one's metrics. ``gateway serve`` and
   ``gateway monitor`` give each server its own directory (``GATEWAY_METRICS_DIR``, see
   ``service.launch.serve_env``); ``apply`` points prometheus_client at it.

2. TimeoutMiddleware:

The middleware (bentoml/_internal/server/http/traffic.py) arms ``loop.call_later(timeout, ...)`` for
every request and never cancels it, so each finished request leaves a timer handle and a future
alive for ``traffic.timeout`` seconds (60 by default). At 3,000 requests/s that is ~180,000 live
objects, and every full garbage collection walks them: measured here as 55-90 ms event-loop stalls
two to three times a second, the gateway's whole p99. The replacement below behaves the same (504
after ``timeout`` seconds without a response start) but cancels its timer when the request ends.

3. Two writes per answer: the uvicorn server BentoML runs writes an answer's head and body in two
system calls; service/http/single_write.py makes them one.

4. uvicorn's access log: uvicorn logs an answer when its ``uvicorn.access`` logger has handlers,
and BentoML's root handler counts (by propagation), so every answer built a log line's arguments
(the client's address, the path) and called ``Logger.info``, which the WARNING level then dropped:
0.5 us a call timed alone, 1.1% of the gateway worker's samples under load (py-spy), for nothing.
Unless that logger would show INFO (BentoML's debug mode), it stops propagating; BentoML's own
access log (``logging.access``) is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse

from service.http import single_write
from service.launch import METRICS_DIR_ENV


async def _timeout_call(self: TimeoutMiddleware, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def send_and_release(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handler = asyncio.ensure_future(self.app(scope, receive, send_and_release))
    try:
        await waiter
    except asyncio.TimeoutError:
        if handler.cancel():
            answer = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(answer, status_code=504)(scope, receive, send)
    else:
        await handler
    finally:
        timer.cancel()


def apply() -> None:
    """Use this server's metrics directory; patch the middleware (unless BentoML changed it); one
    write per answer; no uvicorn access-log calls that log nothing."""
    if os.environ.get(METRICS_DIR_ENV):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[METRICS_DIR_ENV]
    if hasattr(TimeoutMiddleware, "_set_timer_out"):
        TimeoutMiddleware.__call__ = _timeout_call
    single_write.apply()
    access = logging.getLogger("uvicorn.access")
    if not access.isEnabledFor(logging.INFO):
        access.propagate = False
