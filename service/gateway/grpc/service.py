"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), served by each gateway
worker on ``server.grpc_port`` on the same event loop as its HTTP server (grpc.aio), so
``tritonclient.grpc`` and KServe's gRPC clients work unchanged.

Like the REST handlers, this only moves metadata and messages: ``ModelInfer`` hands
``Gateway.predict`` a ``Call`` (routing key and pins from the metadata, ``model_version`` pins a
version, the request's parameters may carry a key field), so validation, batching, shadows,
recording and metrics (``protocol="grpc"``) are the same as for HTTP. Predictions go through the
worker's admission first (RESOURCE_EXHAUSTED with ``retry-after`` when refused). The answer's ids
come back in trailing metadata (``x-gateway-request-id`` and the others every answer carries). A
``GatewayError`` becomes the status code its HTTP status maps to (``STATUS``); anything else is
INTERNAL, logged with its traceback: nothing a caller sends becomes INTERNAL (nor UNKNOWN: bytes
that are not the method's message are INVALID_ARGUMENT, ``MessageIntake``). A message still
arriving counts against the worker's budget for bodies still arriving, as an HTTP body does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from service.config import LimitsConfig
from service.errors import BadRequest, GatewayError, Overloaded
from service.gateway import repository
from service.gateway.admission import OVERLOAD
from service.gateway.arriving import ARRIVING_BODIES, ArrivingBodies
from service.gateway.grpc import inference_pb2 as pb
from service.gateway.grpc import inference_pb2_grpc as rpc
from service.gateway.grpc.codec import decode_infer_request, encode_infer_response
from service.gateway.process import WORKER, Call, Gateway
from traffic.table import EndpointTable

log = logging.getLogger("gateway.grpc")
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC status of each HTTP status a ``GatewayError`` carries (else INTERNAL)."""
SEND_LIMIT_BYTES = 256 * 2**20
"""Answers may be bigger than requests (many outputs per row); bounded all the same."""
WHOLE_WITHIN_S = 0.05
"""A call whose message is not whole this long after its handler began waits for one still
arriving (most come whole with the call's headers: at 1,024 and 2,048 callers of 1-row
``ModelInfer`` none was refused for it, BENCHMARKS.md "gRPC past a thousand callers")."""
MAX_PENDING_CALLS = 4096
"""Calls grpc's core may hold before the worker's server loop takes them; more are cancelled."""
GRPC_INFER = "grpc_infer"
"""The route ``ModelInfer`` is counted under in ``gateway_shed_requests_total``; every other
method is ``grpc_other``."""


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata as headers: lower-case keys, text values (``-bin`` keys left out)."""
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


async def _answered(context: grpc.aio.ServicerContext, work: Callable[[], Awaitable]):
    """``work``'s result, or the call aborted with the status its error maps to."""
    try:
        return await work()
    except GatewayError as error:
        trailing = tuple((k.lower(), str(v)) for k, v in error.headers.items())
        code = STATUS.get(error.status, grpc.StatusCode.INTERNAL)
        await context.abort(code, error.message, trailing_metadata=trailing)
    except Exception:
        log.exception("unhandled error in a gRPC call")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway log")


class InferenceService(rpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over one worker's ``Gateway``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def ServerLive(self, request, context):  # noqa: N802 - the protocol's names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)  # a worker serves only once its models load

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(**repository.SERVER_METADATA)

    async def ModelReady(self, request, context):  # noqa: N802
        async def ready():
            repository.described(
                self.gateway, metadata_of(context), request.name, request.version or None
            )
            return pb.ModelReadyResponse(ready=True)

        return await _answered(context, ready)

    async def ModelMetadata(self, request, context):  # noqa: N802
        async def metadata():
            described = repository.model_metadata(
                self.gateway, metadata_of(context), request.name, request.version or None
            )
            tensors = {
                kind: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in described[kind]]
                for kind in ("inputs", "outputs")
            }
            return pb.ModelMetadataResponse(**{**described, **tensors})

        return await _answered(context, metadata)

    async def ModelConfig(self, request, context):  # noqa: N802
        async def config():
            described = repository.model_config(
                self.gateway, metadata_of(context), request.name, request.version or None
            )
            tensors = {
                kind: [
                    message(**{**t, "data_type": pb.DataType.Value(t["data_type"])})
                    for t in described[kind]
                ]
                for kind, message in (("input", pb.ModelInput), ("output", pb.ModelOutput))
            }
            return pb.ModelConfigResponse(config=pb.ModelConfig(**{**described, **tensors}))

        return await _answered(context, config)

    async def RepositoryIndex(self, request, context):  # noqa: N802
        index = repository.repository_index(self.gateway, metadata_of(context))
        models = [pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index]
        return pb.RepositoryIndexResponse(models=models)

    async def ModelInfer(self, request, context):  # noqa: N802
        gateway = self.gateway
        admission = gateway.admission
        if not admission.admit():
            await self._refuse(context)
        started = time.monotonic()
        try:
            return await _answered(context, lambda: self._infer(request, context))
        finally:
            admission.done(time.monotonic() - started)

    async def _infer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        async def read(table: EndpointTable):
            return decode_infer_request(request)

        call = Call(
            request.model_name,
            "grpc",
            metadata_of(context),
            read,
            pin_version=request.model_version or None,
        )
        answer = await self.gateway.predict(call)
        context.set_trailing_metadata(tuple(answer.headers().items()))
        return encode_infer_response(
            answer.route.endpoint,
            answer.route.model.card.version,
            answer.decoded,
            answer.outputs,
            answer.request_id,
        )

    async def _refuse(self, context) -> None:
        """As the HTTP gate refuses: held a moment, then RESOURCE_EXHAUSTED with Retry-After."""
        self.gateway.metrics.shed_series(GRPC_INFER, OVERLOAD).inc()
        retry = await self.gateway.admission.hold_refused()
        error = Overloaded(f"the gateway is overloaded: retry after {retry} s (nothing was done)")
        trailing = (("retry-after", str(retry)), ("x-gateway-worker", WORKER))
        await context.abort(STATUS[error.status], error.message, trailing_metadata=trailing)


class MessageIntake(grpc.aio.ServerInterceptor):
    """Each call's message is received by the handler itself, not by grpc before the servicer
    runs, for two reasons.

    Bytes that are not the method's message are INVALID_ARGUMENT saying so: grpc parsing them
    fails the call as UNKNOWN ("Unexpected DecodeError"), the code of a server fault.

    A message still arriving is bounded like an HTTP body still arriving: grpc's core buffers
    every call's message until it is whole, and nothing bounded how many it buffered at once
    (service/gateway/arriving.py has what that cost). One not whole within ``WHOLE_WITHIN_S``
    counts as ``limits.max_body_bytes`` among the worker's ``ArrivingBodies`` until it is; past
    ``limits.max_arriving_body_bytes`` the call ends at once, RESOURCE_EXHAUSTED with
    ``retry-after``, and its bytes are let go. Calls whose messages come whole are never refused
    for it.

    The wrapped handler is made once per method the service has (a name it has not, which any
    caller may send, is not remembered)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method not in self._handlers:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            self._handlers[method] = self._receiving_in_handler(method, handler)
        return self._handlers[method]

    def _receiving_in_handler(
        self, method: str, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """``handler`` (unary-unary) as a handler taking a stream of bytes: it asks for the one
        message itself, when it chooses, and parses it."""
        if handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behavior = handler.request_deserializer, handler.unary_unary
        route = GRPC_INFER if method.endswith("/ModelInfer") else "grpc_other"
        gateway = self._gateway

        async def received(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
            async def request():
                limits = gateway.config.limits
                try:
                    data = await _message(messages, gateway.arriving_bodies, limits)
                except Overloaded:
                    gateway.metrics.shed_series(route, ARRIVING_BODIES).inc()
                    raise
                try:
                    return parse(data)
                except DecodeError as error:
                    raise BadRequest(
                        f"malformed request: not the message {method} takes ({error})"
                    ) from None

            return await behavior(await _answered(context, request), context)

        return grpc.stream_unary_rpc_method_handler(
            received, response_serializer=handler.response_serializer
        )


async def _message(
    messages: AsyncIterator[bytes], bodies: ArrivingBodies, limits: LimitsConfig
) -> bytes:
    """A call's one message, counted among ``bodies`` while it is still arriving past
    ``WHOLE_WITHIN_S`` (``Overloaded`` when there is no room) and let go once it is whole or
    the call is over."""
    arriving = asyncio.ensure_future(anext(aiter(messages)))
    counted = 0
    try:
        done, _ = await asyncio.wait((arriving,), timeout=WHOLE_WITHIN_S)
        if not done:
            bodies.take(limits.max_body_bytes, limits.max_arriving_body_bytes)
            counted = limits.max_body_bytes
        return await arriving
    except StopAsyncIteration:
        raise BadRequest("malformed request: the call ended without its message") from None
    finally:
        arriving.cancel()  # nothing, once it has its message
        bodies.let_go(counted)


def _options(gateway: Gateway) -> list[tuple[str, int]]:
    limit = gateway.config.limits.max_body_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(limit, SEND_LIMIT_BYTES)),
        ("grpc.so_reuseport", 1),  # every worker binds the port; the kernel spreads connections
        # A call's flow-control window then grows only for a message its handler asks for
        # (MessageIntake); with the probe, grpc took ~7 MB of each call nothing had asked for yet.
        ("grpc.http2.bdp_probe", 0),
        # Calls grpc holds before the worker asks for them: past 1,000 it cancelled them at
        # random (all past 3,000) as CANCELLED, which callers read as their own cancellation.
        # 4,096 of them hold at most 256 MiB (64 KiB of flow-control window each).
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        *_slow_client_options(gateway.config.server.request_read_timeout_s),
    ]


def _slow_client_options(timeout_s: float) -> list[tuple[str, int]]:
    """``server.request_read_timeout_s`` on the gRPC port, as grpc's core can apply it: a request
    never reaches Python before its message is whole, so no per-call read timeout is to be had.
    A connection must finish its HTTP/2 handshake within it (grpc's default: 120 s), and is
    renewed once it is that old: grpc asks the client to reconnect (GOAWAY), gives the calls in
    flight as long again, then closes it. A connection that sends nothing, or a call whose message
    never ends, is closed within twice the limit, where it would otherwise be kept for ever.
    gRPC clients reconnect on their own: honest calls do not fail for it
    (tests/test_server_abuse.py). 0 (no limit) leaves grpc's defaults."""
    if timeout_s <= 0:
        return []
    timeout_ms = max(1, round(timeout_s * 1000))
    return [
        ("grpc.server_handshake_timeout_ms", timeout_ms),
        ("grpc.max_connection_age_ms", timeout_ms),
        ("grpc.max_connection_age_grace_ms", timeout_ms),
    ]


@contextlib.asynccontextmanager
async def grpc_server(gateway: Gateway, host: str, port: int) -> AsyncIterator[grpc.aio.Server]:
    """The worker's gRPC server on ``host:port`` while the context lasts."""
    server = grpc.aio.server(options=_options(gateway), interceptors=[MessageIntake(gateway)])
    rpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(gateway), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d", host, port)
    try:
        yield server
    finally:
        await server.stop(grace=1.0)
