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

5. The arbiter's control socket: BentoML's arbiter (circus, the process that starts and watches
the workers) takes commands on a TCP port of 127.0.0.1 with no authentication, and one of its
commands starts any program: every local user and every process of the host (another user's, a
container sharing the network namespace) could run commands as the server's user, with its
tokens, its database and its models, or stop it. Its control and event sockets are now Unix
sockets in a directory of the server's own, which no other user may open. An arbiter killed with
SIGKILL cannot remove its directory; the next one to start removes those nothing listens in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from bentoml._internal.utils.circus import Arbiter
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


_arbiter_init = Arbiter.__init__
ARBITER_DIR_PREFIX = "gateway-arbiter-"
STALE_AFTER_S = 60.0
"""A directory younger than this may belong to an arbiter that has not yet bound its socket."""


def _arbiter_on_private_sockets(self: Arbiter, *args: Any, **kwargs: Any) -> None:
    """``Arbiter.__init__`` with its control and event endpoints on Unix sockets in a new
    directory only this user may enter (``mkdtemp`` makes it 0700), removed when it stops."""
    remove_dead_arbiters_directories()
    directory = tempfile.mkdtemp(prefix=ARBITER_DIR_PREFIX)
    kwargs["endpoint"] = f"ipc://{directory}/control"
    kwargs["pubsub_endpoint"] = f"ipc://{directory}/events"
    _arbiter_init(self, *args, **kwargs)
    self.exit_stack.callback(shutil.rmtree, directory, ignore_errors=True)


def remove_dead_arbiters_directories() -> None:
    """Remove this user's arbiter directories that nothing listens in any more (their arbiter
    was killed with SIGKILL): the control socket refuses a connection, or is not there."""
    for directory in Path(tempfile.gettempdir()).glob(f"{ARBITER_DIR_PREFIX}*"):
        try:
            made = directory.stat()
            if made.st_uid != os.getuid() or time.time() - made.st_mtime < STALE_AFTER_S:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(directory / "control"))
        except (ConnectionRefusedError, FileNotFoundError):
            shutil.rmtree(directory, ignore_errors=True)
        except OSError:  # gone meanwhile, or not ours to judge
            continue


def apply() -> None:
    """Use this server's metrics directory; patch the middleware (unless BentoML changed it); one
    write per answer; no uvicorn access-log calls that log nothing; the arbiter's sockets private
    to this user."""
    if os.environ.get(METRICS_DIR_ENV):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[METRICS_DIR_ENV]
    if hasattr(TimeoutMiddleware, "_set_timer_out"):
        TimeoutMiddleware.__call__ = _timeout_call
    single_write.apply()
    access = logging.getLogger("uvicorn.access")
    if not access.isEnabledFor(logging.INFO):
        access.propagate = False
    Arbiter.__init__ = _arbiter_on_private_sockets
