"""The worker's budget for request bodies, and gRPC messages, still arriving.

Most bodies come whole with their request's head. The rest are gathered message by message until
they end (at most ``limits.max_body_bytes`` each), and nothing else bounds how many are gathered at
once: a prediction gives its admission slot back while its body arrives
(service/gateway/http/gate.py), and ``/feedback`` counts a call against its budget once its body
is here, so that clients slow to send cannot lock others out. Unbounded, N clients each sending
nearly ``max_body_bytes`` and then stopping held N times that of the worker's memory until their
connections timed out (``server.request_read_timeout_s``): 200 of them took the demo's worker from
233 to 967 MB in 1.6 s. The gRPC port is the same (service/gateway/grpc/service.py): 800 calls
each sending most of a 4 MB message and stopping took a worker from 227 MB to 3.2 GB in 24 s.

``ArrivingBodies`` counts the bytes of every body that has begun and not finished arriving in the
worker, and a gRPC message not whole soon after its call began as ``max_body_bytes`` (grpc does
not say how much of it has come). What would take the count past
``limits.max_arriving_body_bytes`` ends its request with a 429 (``Retry-After``; over gRPC
RESOURCE_EXHAUSTED), its bytes let go. A body that comes whole in its first message is not
counted: it was never waited for.
"""

from __future__ import annotations

from starlette.types import Message, Receive

from service.errors import Overloaded

TOO_MANY = "too many request bodies are arriving at once: retry shortly (nothing was done)"
ARRIVING_BODIES = "arriving_bodies"
"""The reason a call is refused for the bodies and messages arriving
(``gateway_shed_requests_total{reason}``)."""


class ArrivingBodies:
    """The bytes of the bodies now arriving in this worker (one event loop: no lock)."""

    def __init__(self) -> None:
        self.held = 0

    def take(self, size: int, limit: int) -> None:
        """Count ``size`` more bytes arriving; ``Overloaded``, nothing counted, when that would
        take them past ``limit``."""
        if self.held + size > limit:
            raise Overloaded(TOO_MANY)
        self.held += size

    def let_go(self, size: int) -> None:
        """``size`` bytes counted by ``take`` have arrived, or their request is over."""
        self.held -= size

    def counted(self, receive: Receive, limit: int) -> CountedReceive:
        """``receive`` for one request, its body counted while it arrives, up to ``limit`` bytes
        for all of them together."""
        return CountedReceive(self, receive, limit)


class CountedReceive:
    """One request's ``receive``: each message of a body still arriving counts among its worker's
    ``ArrivingBodies``; the last message, the client's going, or ``release`` lets them go."""

    def __init__(self, bodies: ArrivingBodies, receive: Receive, limit: int) -> None:
        self._bodies = bodies
        self._receive = receive
        self._limit = limit
        self.taken = 0
        """Bytes of this request's body counted now."""
        self.refused = False
        """Whether its body was refused for the others arriving."""

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and message.get("more_body"):
            self.take(len(message.get("body", b"")))
        else:
            self.release()
        return message

    def take(self, size: int) -> None:
        """Count ``size`` more bytes of this body; ``Overloaded`` past the limit, with this body's
        bytes let go."""
        try:
            self._bodies.take(size, self._limit)
        except Overloaded:
            self.release()
            self.refused = True
            raise
        self.taken += size

    def release(self) -> None:
        """This body no longer counts: it has arrived, or its request is over."""
        self._bodies.let_go(self.taken)
        self.taken = 0
