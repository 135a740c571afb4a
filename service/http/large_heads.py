"""A request whose head (request line and headers, or a chunked body's trailers) grows past
``MAX_HEAD_BYTES`` is answered 431 and its connection closed.

uvicorn's HTTP protocol (the one BentoML runs, httptools) sets no bound on a request's head:
httptools grows a header's value by concatenation as its bytes arrive, and uvicorn the URL, so
each read of a long head copies all of it again. Measured on the demo: one connection sending a
single header of 160 MB held the worker's core for the whole 30 s the slow-client limit
(service/http/slow_clients.py) gave it, its memory grew by 250 MB, and its health probe took 3 to
9 s to answer; a handful of such connections take a worker out.

httptools says nothing while a header arrives, only once it is whole, so the bound is kept where
the bytes come in: each read that delivers no body byte and completes no head counts its bytes;
one that does resets the count (a read holds at most 256 KiB, so a head is refused at most that
far past the bound). Bodies are bounded elsewhere (``limits.max_body_bytes``). The cost on the
hot path: about 0.4 us a request (the three wrappers timed alone), against 120-180 us an answer.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
"""The most a request's head may hold: long cookies and tokens fit many times over (nginx keeps
32 KiB by default, Node.js 16 KiB)."""
_ERROR = json.dumps(
    {"error": f"the request's head (URL and headers) is over {MAX_HEAD_BYTES} bytes"}
)
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_ERROR), _ERROR.encode())
)

_COUNTED = "_head_bytes_counted"
"""The attribute on a connection: bytes read since the last read that delivered a body byte or
completed a head."""
_MOVED_ON = "_head_moved_on"
"""The attribute on a connection: whether the read under way delivered a body byte or completed a
head."""

_uvicorn = {
    name: getattr(HttpToolsProtocol, name)
    for name in ("data_received", "on_body", "on_headers_complete")
}


def _data_received(self: HttpToolsProtocol, data: bytes) -> None:
    setattr(self, _MOVED_ON, False)
    _uvicorn["data_received"](self, data)
    counted = 0 if getattr(self, _MOVED_ON) else getattr(self, _COUNTED, 0) + len(data)
    setattr(self, _COUNTED, counted)
    if counted > MAX_HEAD_BYTES and not self.transport.is_closing():
        if _may_answer(self):
            self.transport.write(TOO_LARGE)
        self.transport.close()


def _may_answer(connection: HttpToolsProtocol) -> bool:
    """Whether the 431 may be written: no other answer is on its way or already given to the
    request whose head grew (a new request's, or the trailers of the one being answered)."""
    cycle = connection.cycle
    if cycle is None or not cycle.more_body:  # the last request has fully arrived: a new head
        return cycle is None or cycle.response_complete
    return not cycle.response_started


def _on_body(self: HttpToolsProtocol, body: bytes) -> None:
    _uvicorn["on_body"](self, body)
    setattr(self, _MOVED_ON, True)


def _on_headers_complete(self: HttpToolsProtocol) -> None:
    _uvicorn["on_headers_complete"](self)
    setattr(self, _MOVED_ON, True)


def apply() -> None:
    """Bound the heads of requests to this process's uvicorn servers."""
    HttpToolsProtocol.data_received = _data_received
    HttpToolsProtocol.on_body = _on_body
    HttpToolsProtocol.on_headers_complete = _on_headers_complete
