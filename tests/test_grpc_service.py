"""The gRPC service over an in-process gateway: an answer and its trailing metadata, a refusal under
overload as RESOURCE_EXHAUSTED with retry-after (and counted), and a gateway error as its status;
a call's message counted among the bodies still arriving while it is."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from service.config import LimitsConfig
from service.errors import BadRequest, Overloaded
from service.gateway.arriving import ArrivingBodies
from service.gateway.grpc import inference_pb2 as pb
from service.gateway.grpc.service import (
    WHOLE_WITHIN_S,
    InferenceService,
    MessageIntake,
    _message,
    _slow_client_options,
)
from tests.helpers import ROW, in_process_gateway, write_config


class Aborted(Exception):
    def __init__(self, code, details, trailing):
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, dict(trailing)


class Context:
    """What grpc.aio hands a servicer, as far as the service uses it."""

    def __init__(self, metadata=()):
        self.metadata = tuple(metadata)
        self.trailing: dict = {}

    def invocation_metadata(self):
        return self.metadata

    def set_trailing_metadata(self, metadata):
        self.trailing = dict(metadata)

    async def abort(self, code, details, trailing_metadata=()):
        raise Aborted(code, details, trailing_metadata)


def infer_request(rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cancer")
    request.inputs.add(name="X", datatype="FP32", shape=[rows, 30])
    request.raw_input_contents.append(np.array([ROW] * rows, "<f4").tobytes())
    return request


@pytest.fixture
async def service(demo_models, tmp_path):
    config = write_config(tmp_path / "gateway.yaml", data_dir=str(tmp_path / "data"))
    async with in_process_gateway(config) as (gateway, _):
        yield gateway, InferenceService(gateway)


async def test_an_answer_carries_the_request_id_in_trailing_metadata(service):
    _, servicer = service
    context = Context([("x-user-id", "u-1"), ("x-request-id", "mine")])
    response = await servicer.ModelInfer(infer_request(2), context)
    assert len(response.raw_output_contents) == len(response.outputs) >= 2
    assert (
        context.trailing["x-gateway-request-id"] == response.parameters["request_id"].string_param
    )
    assert context.trailing["x-request-id"] == "mine"


async def test_overload_is_resource_exhausted_with_retry_after(service):
    gateway, servicer = service
    gateway.admission.limit = 0  # every prediction beyond the limit: refused
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(infer_request(), Context())
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(refused.value.trailing["retry-after"]) >= 1 and "overloaded" in refused.value.details
    shed = gateway.metrics.registry.get_sample_value(
        "gateway_shed_requests_total", {"route": "grpc_infer", "reason": "overload"}
    )
    assert shed == 1


async def test_a_gateway_error_is_its_status_and_carries_the_ids(service):
    _, servicer = service
    request = infer_request()
    request.inputs[0].shape[1] = 29
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(request, Context())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.trailing["x-gateway-request-id"].startswith("cancer:")
    with pytest.raises(Aborted) as missing:
        await servicer.ModelMetadata(pb.ModelMetadataRequest(name="nobody"), Context())
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_methods_the_service_has_not_are_not_remembered():
    """Any caller may name any method: the interceptor keeps wrapped handlers only for the
    service's own, so endless made-up names cannot grow it."""
    interceptor = MessageIntake(gateway=None)

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    async def unknown(details):
        return None

    for i in range(100):
        assert await interceptor.intercept_service(unknown, Details(f"/x/Nope{i}")) is None
    assert interceptor._handlers == {}


LIMITS = LimitsConfig(max_body_bytes=4096, max_arriving_body_bytes=8192)
"""Room for two messages still arriving."""


class Messages:
    """A call's messages as grpc.aio hands them to a stream handler: each comes when ``arrive``
    is called (``None``: the call ends)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.asked = 0

    def arrive(self, message: bytes | None) -> None:
        self.queue.put_nowait(message)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        self.asked += 1
        message = await self.queue.get()
        if message is None:
            raise StopAsyncIteration
        return message


async def test_a_message_that_comes_whole_is_not_counted():
    bodies, messages = ArrivingBodies(), Messages()
    messages.arrive(b"whole")
    bodies.held = LIMITS.max_arriving_body_bytes  # no room: it needs none
    assert await _message(messages, bodies, LIMITS) == b"whole"
    assert bodies.held == LIMITS.max_arriving_body_bytes


async def test_a_message_still_arriving_counts_as_the_body_limit_until_it_is_whole():
    bodies, slow = ArrivingBodies(), Messages()
    waiting = asyncio.create_task(_message(slow, bodies, LIMITS))
    await asyncio.sleep(WHOLE_WITHIN_S * 2)
    assert bodies.held == LIMITS.max_body_bytes  # its size is not known until it is whole
    slow.arrive(b"at last")
    assert await waiting == b"at last"
    assert bodies.held == 0


async def test_past_the_budget_a_message_still_arriving_is_refused_and_let_go():
    bodies = ArrivingBodies()
    first, second, third = Messages(), Messages(), Messages()
    holding = [asyncio.create_task(_message(m, bodies, LIMITS)) for m in (first, second)]
    await asyncio.sleep(WHOLE_WITHIN_S * 2)
    with pytest.raises(Overloaded, match="too many request bodies are arriving"):
        await _message(third, bodies, LIMITS)
    assert bodies.held == 2 * LIMITS.max_body_bytes  # the refused one counted nothing
    holding[0].cancel()  # its call is over (the client went)
    with pytest.raises(asyncio.CancelledError):
        await holding[0]
    assert bodies.held == LIMITS.max_body_bytes
    fourth = Messages()
    fourth.arrive(b"room again")
    assert await _message(fourth, bodies, LIMITS) == b"room again"
    second.arrive(b"done")
    assert await holding[1] == b"done" and bodies.held == 0


async def test_a_call_that_ends_without_its_message_is_a_bad_request():
    bodies, messages = ArrivingBodies(), Messages()
    messages.arrive(None)
    with pytest.raises(BadRequest, match="ended without its message"):
        await _message(messages, bodies, LIMITS)
    assert bodies.held == 0


def test_slow_client_limits_follow_the_read_timeout_and_none_when_it_is_off():
    """The handshake's limit and the connections' age are ``server.request_read_timeout_s``; 0
    turns it off, so grpc keeps its defaults rather than getting limits of 0 ms."""
    options = dict(_slow_client_options(2.5))
    assert options == {
        "grpc.server_handshake_timeout_ms": 2500,
        "grpc.max_connection_age_ms": 2500,
        "grpc.max_connection_age_grace_ms": 2500,
    }
    assert _slow_client_options(0) == []
