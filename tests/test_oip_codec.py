"""OIP bodies: JSON and binary tensors decoded exactly, malformed bodies refused with a reason."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from service.codecs.oip import decode_infer_request, encode_infer_response
from service.errors import BadRequest


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), str(len(text))


def test_json_data_nested_or_flat():
    for data in ([[1, 2], [3, 4]], [1, 2, 3, 4]):
        body = json.dumps(
            {
                "id": "r1",
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2], "data": data}],
            }
        ).encode()
        request = decode_infer_request(body, None)
        assert request.id == "r1"
        np.testing.assert_array_equal(request.inputs["X"], np.array([[1, 2], [3, 4]], np.float32))
        assert request.inputs["X"].dtype == np.float32


def test_binary_inputs_including_bytes():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    words = [b"ab", b"", b"xyz"]
    packed = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = {
        "inputs": [
            {
                "name": "X",
                "datatype": "FP32",
                "shape": [3, 2],
                "parameters": {"binary_data_size": x.nbytes},
            },
            {
                "name": "S",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": len(packed)},
            },
        ],
        "parameters": {"binary_data_output": True},
    }
    body, length = binary_body(header, x.tobytes(), packed)
    request = decode_infer_request(body, length)
    np.testing.assert_array_equal(request.inputs["X"], x)
    assert list(request.inputs["S"]) == ["ab", "", "xyz"]
    assert request.all_binary


def test_response_binary_round_trip():
    outputs = {
        "label": np.array(["a", "bb"], dtype=object),
        "p": np.array([[0.25, 0.75]] * 2, np.float32),
    }
    header, _ = binary_body(
        {
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
            "parameters": {"binary_data_output": True},
        }
    )
    request = decode_infer_request(header, None)
    content, length = encode_infer_response("m", "v1", request, outputs)
    answer = json.loads(content[:length])
    assert answer["model_name"] == "m" and answer["model_version"] == "v1"
    sizes = [o["parameters"]["binary_data_size"] for o in answer["outputs"]]
    blob = content[length:]
    assert len(blob) == sum(sizes)
    probabilities = np.frombuffer(blob[sizes[0] :], np.float32).reshape(2, 2)
    np.testing.assert_array_equal(probabilities, outputs["p"])
    assert blob[: sizes[0]] == struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bb"


def test_response_json_only_requested_outputs():
    body = json.dumps(
        {
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "p"}],
        }
    ).encode()
    request = decode_infer_request(body, None)
    content, length = encode_infer_response(
        "m", "v1", request, {"p": np.array([[1.5]], np.float32), "q": np.zeros(1)}
    )
    assert length is None
    answer = json.loads(content)
    assert answer["outputs"] == [{"name": "p", "datatype": "FP32", "shape": [1, 1], "data": [1.5]}]


def binary_input(datatype: str, shape: list, size: int, blob: bytes) -> tuple[bytes, str]:
    header = {
        "inputs": [
            {
                "name": "X",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    return binary_body(header, blob)


def tensor(**fields) -> bytes:
    base = {"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
    return json.dumps({"inputs": [{**base, **fields}]}).encode()


@pytest.mark.parametrize(
    ("body", "length", "reason"),
    [
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (tensor(datatype="FLOAT"), None, "unknown datatype"),
        (tensor(shape=[1, -2]), None, "non-negative integers"),
        (tensor(shape=[2, 2]), None, "needs 4 values, got 2"),
        (tensor(data=[[1], [2, 3]]), None, "ragged"),
        (tensor(data=["a", "b"]), None, "does not fit datatype FP32"),
        (tensor(datatype="INT8", data=[1, 300]), None, "out of range"),
        (tensor(datatype="INT64", data=[1.5, 2]), None, "does not fit"),
        (tensor(data=None), None, "'data' must be a list"),
        (b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}]}', None, "neither 'data'"),
        (tensor(parameters={"binary_data_size": 8}), "abc", "must be an integer"),
        (tensor(parameters={"binary_data_size": 8}), "100000", "outside the body"),
        (*binary_input("FP32", [2], 8, b"\0" * 4), "runs past the end"),
        (*binary_input("FP32", [2], 4, b"\0" * 4), "does not match shape"),
        (*binary_input("FP32", [1], 4, b"\0" * 6), "trailing binary bytes"),
        (*binary_input("BYTES", [1], 6, struct.pack("<I", 9) + b"ab"), "runs past"),
        (
            json.dumps(
                {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}
            ).encode(),
            None,
            "given twice",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": "p",
                }
            ).encode(),
            None,
            "'outputs' must be a list",
        ),
        (
            json.dumps(
                {"id": 5, "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}
            ).encode(),
            None,
            "'id' must be a string",
        ),
    ],
)
def test_malformed_bodies_are_refused_with_reason(body, length, reason):
    with pytest.raises(BadRequest) as error:
        decode_infer_request(body, length)
    assert reason in error.value.message
