"""An answer's status line, headers and body leave the server in one write.

uvicorn's HTTP protocol (the one BentoML runs, httptools) writes a response's status line and
headers to the socket as soon as the app sends ``http.response.start``, then the body when it sends
``http.response.body``: two system calls and two TCP segments for every answer, each of which the
client must read on its own. Measured here on loopback at 64 callers (BENCHMARKS.md): TCP segments
per request 4.4 to 2.3; the bare Starlette app 6-8% more requests/s in the median of 12 and 14
alternating pairs of runs, the gateway 2.6% more, with 5% less CPU per answer, in 10 pairs. Here
the head is held until the body's first write, and both go in one.

The head is written with the first body message whatever it holds (alone, where that message
writes nothing, as for HEAD), so a streamed answer's head leaves with its first chunk; an answer
whose app never sends a body message (it failed midway) is closed by uvicorn as before, without its
head. Nothing else about uvicorn's handling changes: the status line, header checks, content
length, keep-alive and flow control are its own.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

_HEAD = "_held_head"
"""The attribute on a request's cycle that holds its head between the two messages."""


class _HeadCatcher:
    """Stands in for the transport while uvicorn writes a response's head, and keeps it."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head = b""

    def write(self, data: bytes) -> None:
        self.head = data


class _HeadFirst:
    """Stands in for the transport while uvicorn writes the body: the held head goes first, in
    the same write."""

    __slots__ = ("_transport", "_head")

    def __init__(self, transport: Any, head: bytes) -> None:
        self._transport = transport
        self._head = head

    def write(self, data: bytes) -> None:
        self._transport.write(self._head + data)
        self._head = b""

    def flush(self) -> None:
        """Write the head if no body write took it (an answer to HEAD writes no body)."""
        if self._head and not self._transport.is_closing():
            self.write(b"")

    def close(self) -> None:
        """uvicorn closes a connection that is not kept alive right after the last write."""
        self.flush()
        self._transport.close()


_uvicorn_send = RequestResponseCycle.send


async def _send(self: RequestResponseCycle, message: Any) -> None:
    if message["type"] == "http.response.start" and not self.response_started:
        transport, catcher = self.transport, _HeadCatcher()
        self.transport = catcher
        try:
            await _uvicorn_send(self, message)
        finally:
            self.transport = transport
        setattr(self, _HEAD, catcher.head)
        return
    head = self.__dict__.pop(_HEAD, None)
    if head is None:
        await _uvicorn_send(self, message)
        return
    transport, head_first = self.transport, _HeadFirst(self.transport, head)
    self.transport = head_first
    try:
        await _uvicorn_send(self, message)
    finally:
        self.transport = transport
    head_first.flush()


def apply() -> None:
    """Send every answer of this process's uvicorn servers in one write (idempotent)."""
    RequestResponseCycle.send = _send
