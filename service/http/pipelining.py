"""A connection that pipelines more than ``MAX_PIPELINED`` requests ahead of its answers is closed.

HTTP/1.1 lets a client send requests without waiting for the answers; uvicorn's HTTP protocol (the
one BentoML runs, httptools) answers them in turn and keeps the ones waiting in a queue, with no
bound, and reads on whenever an answer is sent. Measured on the demo: one connection sending
small pipelined requests as fast as it could (and reading its answers) took the worker from 227
MB to 1.3 GB in 7 s, with 58 requests answered: a few connections take a worker out. The queued
requests have not reached the gateway yet, so admission cannot refuse them.

Here a request that begins while ``MAX_PIPELINED`` are already queued closes the connection: the
requests still queued are dropped unanswered, as on any closed connection, and the client
reconnects. Clients that pipeline (few do) send a handful ahead; none waits on 128. The cost on
the hot path: one length check per request.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_PIPELINED = 128
"""Requests a connection may have queued behind the one being answered."""

_uvicorn_on_url = HttpToolsProtocol.on_url


def _on_url(self: HttpToolsProtocol, url: bytes) -> None:
    if len(self.pipeline) >= MAX_PIPELINED and not self.transport.is_closing():
        self.transport.close()
    _uvicorn_on_url(self, url)


def apply() -> None:
    """Bound the requests a connection to this process's uvicorn servers may queue."""
    HttpToolsProtocol.on_url = _on_url
