"""Connections whose client takes too long to send a request are closed (slowloris).

uvicorn's HTTP protocol (the one BentoML runs, httptools) times a connection out only while it is
idle between two requests (``timeout_keep_alive``). A client that connects and sends nothing, or
sends a request's head or body a few bytes at a time, keeps its connection, a file descriptor and
the request's task for as long as it likes: measured on the demo, three such connections were all
still open after 45 s. Enough of them use up the worker's descriptors, and nobody else connects.

Here each connection notes when it started waiting on its client (when it was opened, and when a
request's first byte came) and forgets it once that request has fully arrived; once a second a
sweep closes every connection that has waited longer than the limit, with a 408 when no answer
has started. What the server makes a caller wait for (a queue, a held refusal, the model) is not
counted: the request has arrived by then. The cost on the hot path is two attribute writes and a
clock read per request.

The limit alone does not keep the worker's descriptors for callers: connections that send
nothing, opened faster than the limit closes them, fill the worker's open-file limit, and a
worker out of files closes every new connection at once (libuv accepts and closes it), so every
caller is kept out until a sweep frees some (a gateway with 256 files behind 306 silent
connections answered no caller for the whole 30 s). So while the worker holds connections past
half its open-file limit, the limit is ``UNDER_PRESSURE_S``: what a caller that is really
sending its request needs, and not what a silent connection may keep.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWEEP_EVERY_S = 1.0
"""How often connections are checked: a slow client is closed between limit and limit + this."""
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
UNDER_PRESSURE_S = 1.0
"""The limit while the worker's connections hold over half its open-file limit."""

_SINCE = "_waiting_on_client_since"
"""The attribute on a connection: when it started waiting on its client, or None while it does
not (a request has fully arrived, or none has begun since the last answer)."""

_uvicorn = {
    name: getattr(HttpToolsProtocol, name)
    for name in ("connection_made", "on_message_begin", "on_message_complete")
}
_limit_s = 0.0
_pressure_at = float("inf")
"""Connections past which the limit is ``UNDER_PRESSURE_S``: half the open-file limit."""
_sweeper: asyncio.Task | None = None


def _connection_made(self: HttpToolsProtocol, transport: Any) -> None:
    _uvicorn["connection_made"](self, transport)
    setattr(self, _SINCE, time.monotonic())
    global _sweeper
    if _sweeper is None or _sweeper.done():
        _sweeper = asyncio.get_running_loop().create_task(_sweep(self.connections))


def _on_message_begin(self: HttpToolsProtocol) -> None:
    _uvicorn["on_message_begin"](self)
    if getattr(self, _SINCE, None) is None:
        setattr(self, _SINCE, time.monotonic())


def _on_message_complete(self: HttpToolsProtocol) -> None:
    _uvicorn["on_message_complete"](self)
    setattr(self, _SINCE, None)


async def _sweep(connections: set) -> None:
    """Forever: close the connections that have waited on their client longer than the limit."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        close_slow_ones(connections, limit_for(len(connections)), time.monotonic())


def limit_for(connections: int) -> float:
    """How long a connection may wait on its client while the worker holds ``connections``."""
    return min(_limit_s, UNDER_PRESSURE_S) if connections > _pressure_at else _limit_s


def close_slow_ones(connections: set, limit_s: float, now: float) -> None:
    """Close the ``connections`` that have waited on their client more than ``limit_s``."""
    too_old = now - limit_s
    for connection in list(connections):
        since = getattr(connection, _SINCE, None)
        if since is not None and since < too_old:
            close_slow(connection)


def close_slow(connection: HttpToolsProtocol) -> None:
    """Close a connection whose request did not arrive in time (408 unless an answer began)."""
    transport = connection.transport
    if transport.is_closing():
        return
    cycle = connection.cycle
    if cycle is None or not cycle.response_started:
        transport.write(TIMED_OUT)
    transport.close()


def apply(limit_s: float) -> None:
    """Close, in this process's uvicorn servers, connections whose client has not sent a whole
    request within ``limit_s`` of opening it or of starting the request (``UNDER_PRESSURE_S``
    past half the open-file limit as it is now: call it after raising that); 0 leaves uvicorn as
    it is."""
    global _limit_s, _pressure_at
    if limit_s <= 0:
        return
    _limit_s = limit_s
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    _pressure_at = float("inf") if files == resource.RLIM_INFINITY else files / 2
    HttpToolsProtocol.connection_made = _connection_made
    HttpToolsProtocol.on_message_begin = _on_message_begin
    HttpToolsProtocol.on_message_complete = _on_message_complete
