"""gRPC infer messages to the gateway's requests and back: typed and raw inputs, BYTES, parameters,
outputs answered the way inputs came, and every malformed message a BadRequest naming it."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import BadRequest
from service.gateway.grpc import inference_pb2 as pb
from service.gateway.grpc.codec import decode_infer_request, encode_infer_response

ROWS = np.arange(6, dtype=np.float32).reshape(2, 3)


def typed(datatype: str = "FP32", field: str = "fp32_contents", values=None, shape=(2, 3)):
    request = pb.ModelInferRequest(model_name="m", id="caller-id")
    tensor = request.inputs.add(name="X", datatype=datatype, shape=list(shape))
    getattr(tensor.contents, field).extend(ROWS.ravel().tolist() if values is None else values)
    return request


def raw(*blobs: bytes, datatype: str = "FP32", shape=(2, 3)):
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="X", datatype=datatype, shape=list(shape))
    request.raw_input_contents.extend(blobs)
    return request


def test_typed_and_raw_inputs_decode_to_the_same_tensor():
    from_typed = decode_infer_request(typed())
    from_raw = decode_infer_request(raw(ROWS.astype("<f4").tobytes()))
    np.testing.assert_array_equal(from_typed.inputs["X"], ROWS)
    np.testing.assert_array_equal(from_raw.inputs["X"], ROWS)
    assert from_typed.inputs["X"].dtype == np.float32 and from_typed.id == "caller-id"
    assert not from_typed.all_binary and from_raw.all_binary


def test_parameters_and_requested_outputs_come_through():
    request = typed()
    request.parameters["user"].string_param = "u-7"
    request.parameters["n"].int64_param = 3
    request.outputs.add(name="label")
    decoded = decode_infer_request(request)
    assert decoded.fields == {"user": "u-7", "n": 3} and decoded.outputs == ("label",)


def test_integer_and_bytes_inputs():
    ints = typed("INT8", "int_contents", [1, -2, 3, 4, 5, 6])
    assert decode_infer_request(ints).inputs["X"].dtype == np.int8
    words = typed("BYTES", "bytes_contents", [b"a", b"b"], shape=(2, 1))
    assert decode_infer_request(words).inputs["X"].ravel().tolist() == ["a", "b"]


@pytest.mark.parametrize(
    "request_, named",
    [
        (pb.ModelInferRequest(model_name="m"), "non-empty"),
        (typed(values=[1.0] * 5), "needs 6 values"),
        (typed("INT8", "int_contents", [1, 2, 3, 4, 5, 300]), "out of range"),
        (typed("FP16", "fp32_contents"), "raw_input_contents only"),
        (typed("COMPLEX", "fp32_contents"), "unknown datatype"),
        (typed("BYTES", "bytes_contents", [b"\xff", b"a"], shape=(2, 1)), "UTF-8"),
        (raw(b"\0" * 23), "does not match shape"),
        (raw(b"\0" * 24, b"\0" * 24), "raw_input_contents has 2"),
    ],
)
def test_malformed_messages_say_what_is_wrong(request_, named):
    with pytest.raises(BadRequest, match=named):
        decode_infer_request(request_)


def test_a_shape_over_the_rank_limit_and_twice_the_same_input_are_refused():
    deep = typed(shape=(1,) * 33, values=[1.0])
    with pytest.raises(BadRequest, match="dimensions"):
        decode_infer_request(deep)
    twice = typed()
    twice.inputs.add().CopyFrom(twice.inputs[0])
    with pytest.raises(BadRequest, match="given twice"):
        decode_infer_request(twice)


def test_answers_go_back_the_way_the_inputs_came():
    outputs = {"label": np.array(["a", "b"], dtype=object), "p": ROWS[:, :2]}
    typed_answer = encode_infer_response("m", "v1", decode_infer_request(typed()), outputs, "m:1")
    assert not typed_answer.raw_output_contents and typed_answer.id == "caller-id"
    by_name = {o.name: o for o in typed_answer.outputs}
    assert list(by_name["label"].contents.bytes_contents) == [b"a", b"b"]
    assert list(by_name["p"].shape) == [2, 2] and by_name["p"].datatype == "FP32"
    assert typed_answer.parameters["request_id"].string_param == "m:1"
    request = raw(ROWS.astype("<f4").tobytes())
    request.outputs.add(name="p")
    raw_answer = encode_infer_response("m", "v1", decode_infer_request(request), outputs, "m:2")
    (blob,) = raw_answer.raw_output_contents
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4").reshape(2, 2), ROWS[:, :2])
