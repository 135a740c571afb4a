"""The gRPC service over an in-process gateway: an answer and its trailing metadata, a refusal under
overload as RESOURCE_EXHAUSTED with retry-after (and counted), and a gateway error as its status."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.gateway.grpc import inference_pb2 as pb
from service.gateway.grpc.service import (
    InferenceService,
    MalformedMessages,
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
    interceptor = MalformedMessages()

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    async def unknown(details):
        return None

    for i in range(100):
        assert await interceptor.intercept_service(unknown, Details(f"/x/Nope{i}")) is None
    assert interceptor._handlers == {}


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
