"""The outermost ASGI app of a gateway worker: predictions are admitted before anything else is
done for them, and refused cheaply when they cannot be served in time.

Prediction calls (``POST /predict/{endpoint}``, ``POST /v2/models/{model}[/versions/{v}]/infer``)
ask ``Admission`` (service/gateway/admission.py) first; admitted, they go straight to their
handler (service/gateway/http/predict.py, oip.py), past BentoML's middleware stack and Starlette's
router, none of which serves them (tracing is off for these paths, metrics are the gateway's own, the access log is
off, the timeout is the SLO's business here; errors become answers with the same handlers as
everywhere, service/http/responses.py); refused, they get a 429 without their body being read.
An admitted call whose body is still arriving (nearly every body comes whole, in the request's
first packets) gives its slot back while it waits for the rest and asks again once it has it: a
client sending its body a few bytes at a time would otherwise hold a slot, and 80 such clients
had every other caller refused. Bodies still arriving, a prediction's or any other call's, count
against the worker's ``ArrivingBodies`` (service/gateway/arriving.py), which bounds the memory
they hold.
Everything else goes to BentoML's app as before, so ``bentoml serve`` and its routes (``/livez``,
``/readyz``, the gateway's own app mounted at ``/``) work unchanged.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Scope

from service.config import LimitsConfig
from service.errors import Overloaded
from service.gateway.admission import OVERLOAD, Admission
from service.gateway.arriving import ARRIVING_BODIES, ArrivingBodies, CountedReceive
from service.gateway.http.oip import infer
from service.gateway.http.predict import predict
from service.http.responses import error_response

Handler = Callable[[Request], Awaitable[Response]]
ROUTES: tuple[tuple[str, re.Pattern, Handler], ...] = (
    ("predict", re.compile(r"/predict/(?P<endpoint>[^/]+)"), predict),
    (
        "infer",
        re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer"),
        infer,
    ),
)
"""(route name, path, handler) of the prediction calls: the same paths as the app's routes."""


MAX_KNOWN_PATHS = 4096
"""Paths whose match is remembered (a bounded cache: a caller sending endless new paths only
empties it)."""
MAX_KNOWN_PATH_LENGTH = 256
"""Longer paths are matched every time, so the cache holds at most about a megabyte."""
_known_paths: dict[str, tuple[str, dict, Handler] | None] = {}


def _match(path: str) -> tuple[str, dict, Handler] | None:
    for name, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return name, {k: v for k, v in match.groupdict().items() if v is not None}, handler
    return None


def prediction(scope: Scope) -> tuple[str, dict, Handler] | None:
    """(route name, path parameters, handler) when ``scope`` is a prediction call. Callers use
    a handful of paths, so each one's match is remembered rather than searched again."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    found = _known_paths.get(path, False)
    if found is False:
        found = _match(path)
        if len(path) <= MAX_KNOWN_PATH_LENGTH:
            if len(_known_paths) >= MAX_KNOWN_PATHS:
                _known_paths.clear()
            _known_paths[path] = found
    if found is None:
        return None
    name, params, handler = found
    return name, dict(params), handler


class HeaderMap(dict):
    """A request's headers as a dict built once: looked up without case, the first of repeated
    headers winning, as with Starlette's ``Headers``, whose every lookup scans the raw list (and
    raises and catches a ``KeyError`` for each header that is absent, as most asked for are)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


def _declared_over(scope: Scope, limit: int) -> bool:
    """Whether the request says its body is over ``limit``: its handler refuses it (413) at once,
    without waiting for it."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return not value.isdigit() or int(value) > limit
    return False


async def _whole_body(first: Message, receive: CountedReceive, limit: int) -> Message:
    """The body as one message, read until it ends, or passes ``limit`` bytes (the handler then
    refuses it as too large), or the client goes (that message instead); counted meanwhile among
    the bodies arriving, ``Overloaded`` when too many bytes of them are."""
    chunks, size, message = [first.get("body", b"")], len(first.get("body", b"")), first
    try:
        receive.take(size)
        while message.get("more_body") and size <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return message
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
    finally:
        receive.release()
    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


class PredictionRequest(Request):
    """A Starlette request whose ``headers`` are a ``HeaderMap`` and whose body is the message
    the gate ``received``: all of it, or the client's going away, or (a body declared over the
    limit) what came first, which its handler refuses unread."""

    def __init__(self, scope: Scope, receive: Callable, received: Message) -> None:
        super().__init__(scope, receive if received["type"] == "http.request" else _disconnected)
        if received["type"] == "http.request":
            self._body = received.get("body", b"")

    async def body(self) -> bytes:
        """The body the gate read (Starlette's ``body`` would go through ``stream()``, an async
        generator: 2.4 us a request instead of 0.8)."""
        if not hasattr(self, "_body"):  # the client went before its body came
            self._is_disconnected = True
            raise ClientDisconnect()
        return self._body

    @property
    def headers(self) -> HeaderMap:  # type: ignore[override]
        try:
            return self._header_map
        except AttributeError:
            raw = reversed(self.scope["headers"])  # a comprehension: half a generator's cost
            self._header_map = HeaderMap({k.decode("latin-1"): v.decode("latin-1") for k, v in raw})
            return self._header_map


class PredictionGate:
    """The worker's outermost ASGI app: predictions through ``Admission`` to the gateway's own app,
    everything else to BentoML's."""

    def __init__(
        self,
        bentoml_app: ASGIApp,
        gateway_app: ASGIApp,
        admission: Callable[[], Admission | None],
        refused: Callable[[str, str], None],
        worker: str,
        limits: Callable[[], LimitsConfig],
        arriving_bodies: Callable[[], ArrivingBodies],
    ) -> None:
        self.bentoml_app = bentoml_app
        self.gateway_app = gateway_app
        self.admission = admission
        """This worker's admission, once its gateway has started (None before)."""
        self.refused = refused
        """Counts a refusal by route (``predict``, ``infer``, ``other``) and reason
        (``SHED_SERIES``)."""
        self.worker = worker
        self.limits = limits
        """The gateway's ``limits``: a body still arriving is read as far as ``max_body_bytes``,
        and all of them hold at most ``max_arriving_body_bytes``."""
        self.arriving_bodies = arriving_bodies
        """The worker's bodies still arriving, once its gateway has started."""

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        call = prediction(scope)
        admission = self.admission() if call is not None else None
        if admission is None:
            await self._pass_on(scope, receive, send)
            return
        name, params, handler = call
        if not admission.admit():
            await self._refuse(admission, name, send)
            return
        received = await receive()
        if received.get("more_body") and not _declared_over(
            scope, (limits := self.limits()).max_body_bytes
        ):
            admission.release()
            counted = self.arriving_bodies().counted(receive, limits.max_arriving_body_bytes)
            try:
                received = await _whole_body(received, counted, limits.max_body_bytes)
            except Overloaded as error:
                self.refused(name, ARRIVING_BODIES)
                refusal = await error_response(Request(scope), error)
                await refusal(scope, receive, send)
                return
            if not admission.admit():
                await self._refuse(admission, name, send)
                return
        started = time.monotonic()
        try:
            scope["app"], scope["path_params"] = self.gateway_app, params
            request = PredictionRequest(scope, receive, received)
            try:
                response = await handler(request)
            except Exception as error:
                response = await error_response(request, error)
            await response(scope, receive, send)
        finally:
            admission.done(time.monotonic() - started)

    async def _pass_on(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """To BentoML's app, with the body counted while it arrives once the gateway has started
        (before, no route reads one)."""
        if scope["type"] != "http" or self.admission() is None:
            await self.bentoml_app(scope, receive, send)
            return
        counted = self.arriving_bodies().counted(receive, self.limits().max_arriving_body_bytes)
        try:
            await self.bentoml_app(scope, counted, send)
        finally:
            counted.release()
            if counted.refused:
                self.refused("other", ARRIVING_BODIES)

    async def _refuse(self, admission: Admission, route: str, send: Callable) -> None:
        self.refused(route, OVERLOAD)
        headers, body = _refusal(await admission.hold_refused(), self.worker)
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@functools.cache
def _refusal(retry_after_s: int, worker: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The 429's headers and body for a ``Retry-After`` (a few values: made once each)."""
    body = msgspec.json.encode(
        {"error": f"the gateway is overloaded: retry after {retry_after_s} s (nothing was done)"}
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
        (b"x-gateway-worker", worker.encode()),
    ]
    return headers, body
