"""The gRPC service over an in-process gateway: an answer and its trailing metadata, a refusal under
overload as RESOURCE_EXHAUSTED with retry-after (and counted), and a gateway error as its status;
a call's message counted among the bodies still arriving while it is."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

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
from service.tensors import OIP_TO_NUMPY
from tests.helpers import ROW, in_process_gateway, write_config

CALLERS_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
"""What a request the caller got wrong may end in (413 and 429 are RESOURCE_EXHAUSTED, which
these requests are too small and too few for)."""


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


def _typed_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cancer")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 30]).contents.fp32_contents.extend(ROW)
    return request


def _change(rng: random.Random, request: pb.ModelInferRequest) -> None:
    """Change one part of ``request`` at random, as a caller probing the service would."""
    tensor = request.inputs[0] if request.inputs else request.inputs.add(name="X")
    field = rng.choice(("bool", "int", "int64", "uint", "uint64", "fp32", "fp64", "bytes"))
    value = {"bool": True, "bytes": b"\xff", "uint64": 2**63, "fp32": 3e38, "fp64": 1e308}

    def reshape() -> None:
        del tensor.shape[:]
        tensor.shape.extend(
            rng.choice(([30], [2, 30], [0, 30], [1, 29], [1, 30, 1], [], [2**40, 30], [1, 2**62]))
        )

    def parameter() -> None:
        name = rng.choice(("x-user-id", "binary_data_output", "request_id"))
        kind, given = rng.choice(
            (("string_param", "é" * 300), ("int64_param", -1), ("bool_param", True))
        )
        setattr(request.parameters[name], kind, given)

    changes = (
        lambda: setattr(request, "model_name", rng.choice(("diabetes", "", "..", "cancer:v1"))),
        lambda: setattr(request, "model_version", rng.choice(("v1", "v2", "latest", ".."))),
        lambda: setattr(request, "id", rng.choice(("a", "é" * 10, "x" * 10_000))),
        lambda: setattr(tensor, "datatype", rng.choice((*OIP_TO_NUMPY, "X", ""))),
        lambda: setattr(tensor, "name", rng.choice(("Y", "", "é", "x" * 1000))),
        reshape,
        lambda: getattr(tensor.contents, f"{field}_contents").extend(
            [value.get(field, 1)] * rng.choice((1, 29, 30, 31))
        ),
        lambda: request.raw_input_contents.append(
            rng.choice((b"", b"\x00" * 119, b"\x00" * 120, np.array([ROW], "<f4").tobytes()))
        ),
        lambda: setattr(
            tensor.parameters["binary_data_size"], "int64_param", rng.choice((-1, 0, 120, 2**62))
        ),
        lambda: request.outputs.add(name=rng.choice(("label", "probabilities", "nope", ""))),
        parameter,
        lambda: request.inputs.add(name=rng.choice(("X", "Y")), datatype="FP32", shape=[1, 30]),
        lambda: request.ClearField("inputs"),
    )
    rng.choice(changes)()


async def test_changed_infer_requests_end_in_an_answer_or_a_callers_status_never_internal(service):
    """Bytes that parse as the message, each part of a valid one changed at random: the status
    is the caller's (INVALID_ARGUMENT, NOT_FOUND), never INTERNAL or UNKNOWN (a server fault)."""
    _, servicer = service
    rng = random.Random(3)
    codes: Counter = Counter()
    for _ in range(20_000):
        request = _typed_request()
        if rng.random() < 0.5:  # the same tensor, raw
            request.inputs[0].ClearField("contents")
            request.raw_input_contents.append(np.array([ROW], "<f4").tobytes())
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            _change(rng, request)
        try:
            await servicer.ModelInfer(request, Context([("x-user-id", str(rng.random()))]))
            codes["OK"] += 1
        except Aborted as aborted:
            codes[aborted.code] += 1
            assert aborted.code in CALLERS_CODES, (request, aborted.details)
    assert codes["OK"] > 2000 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 2000, codes


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
