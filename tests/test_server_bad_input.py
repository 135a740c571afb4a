"""A corpus of bad requests against the real gateway: each gets a 4xx JSON error naming the problem,
none gets a 5xx, and good requests sent alongside are all answered correctly."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct

import aiohttp
import numpy as np
import pytest

from tests.helpers import METRICS_AUTH

pytestmark = pytest.mark.integration

ROW = [1.0] * 30


def oip(inputs: list, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def x_tensor(shape=(1, 30), datatype="FP32", data=None, name="X") -> dict:
    values = data if data is not None else [1.0] * int(np.prod(shape))
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": values}


def binary(
    shape, blob: bytes, size: int | None = None, datatype: str = "FP32"
) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob) if size is None else size},
                }
            ]
        }
    ).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


NAN_BLOB = np.array([[np.nan] + [1.0] * 29], np.float32).tobytes()
PLAIN = "/predict/cancer"
INFER = "/v2/models/cancer/infer"

# (name, method, path, body, headers, expected status, words the error must contain)
CORPUS = [
    ("plain malformed json", "POST", PLAIN, b'{"instances": [', {}, 400, "malformed JSON"),
    ("plain not an object", "POST", PLAIN, b"[1,2]", {}, 400, "instances"),
    ("plain empty batch", "POST", PLAIN, b'{"instances": []}', {}, 400, "empty batch"),
    (
        "plain wrong width",
        "POST",
        PLAIN,
        json.dumps({"instances": [[1, 2]]}).encode(),
        {},
        400,
        "takes 30 features",
    ),
    (
        "plain unknown feature",
        "POST",
        PLAIN,
        json.dumps({"instances": [dict.fromkeys(["x"], 1)]}).encode(),
        {},
        400,
        "missing feature",
    ),
    (
        "plain strings",
        "POST",
        PLAIN,
        json.dumps({"instances": [["a"] * 30]}).encode(),
        {},
        400,
        "only numbers",
    ),
    (
        "plain NaN literal",
        "POST",
        PLAIN,
        b'{"instances": [[NaN' + b", 1" * 29 + b"]]}",
        {},
        400,
        "malformed JSON",
    ),
    (
        "plain infinity",
        "POST",
        PLAIN,
        b'{"instances": [[1e999' + b", 1" * 29 + b"]]}",
        {},
        400,
        "out of range",
    ),
    (
        "plain too many rows",
        "POST",
        PLAIN,
        json.dumps({"instances": [ROW] * 101}).encode(),
        {},
        413,
        "limit of 100",
    ),
    ("plain body too large", "POST", PLAIN, b" " * 70000, {}, 413, "limit of 65536 bytes"),
    (
        "plain gzip bomb",
        "POST",
        PLAIN,
        gzip.compress(b" " * 200000),
        {"Content-Encoding": "gzip"},
        413,
        "decompressed",
    ),
    (
        "plain broken gzip",
        "POST",
        PLAIN,
        b"not gzip",
        {"Content-Encoding": "gzip"},
        400,
        "not valid gzip",
    ),
    (
        "plain unknown encoding",
        "POST",
        PLAIN,
        b"{}",
        {"Content-Encoding": "br"},
        415,
        "not supported",
    ),
    ("plain unknown endpoint", "POST", "/predict/nope", b"{}", {}, 404, "unknown endpoint 'nope'"),
    ("plain bad request id", "POST", PLAIN, b"{}", {"x-request-id": "a b"}, 400, "x-request-id"),
    ("plain wrong method", "GET", PLAIN, None, {}, 404, "no route"),
    ("oip malformed json", "POST", INFER, b"{", {}, 400, "malformed JSON"),
    ("oip no inputs", "POST", INFER, b'{"inputs": []}', {}, 400, "non-empty list"),
    (
        "oip wrong datatype",
        "POST",
        INFER,
        oip([x_tensor(datatype="FP64")]),
        {},
        400,
        "must be FP32",
    ),
    (
        "oip datatype not a string",  # a list or an object was looked up as a key: a 500
        "POST",
        INFER,
        oip([x_tensor(datatype=[None]), x_tensor(name="Y", datatype={"a": 1})]),
        {},
        400,
        "unknown datatype [None]",
    ),
    ("oip wrong shape", "POST", INFER, oip([x_tensor(shape=(1, 29))]), {}, 400, "expects [-1, 30]"),
    ("oip unknown input", "POST", INFER, oip([x_tensor(name="Y")]), {}, 400, "missing input"),
    (
        "oip extra input",
        "POST",
        INFER,
        oip([x_tensor(), x_tensor(name="Y")]),
        {},
        400,
        "unknown input",
    ),
    (
        "oip data/shape mismatch",
        "POST",
        INFER,
        oip([x_tensor(shape=(2, 30), data=ROW)]),
        {},
        400,
        "needs 60 values",
    ),
    (
        "oip empty batch",
        "POST",
        INFER,
        oip([x_tensor(shape=(0, 30), data=[])]),
        {},
        400,
        "empty batch",
    ),
    ("oip too many rows", "POST", INFER, oip([x_tensor(shape=(101, 30))]), {}, 413, "limit of 100"),
    (
        "oip unknown output",
        "POST",
        INFER,
        oip([x_tensor()], outputs=[{"name": "nope"}]),
        {},
        400,
        "unknown output",
    ),
    ("oip NaN in binary", "POST", INFER, *binary([1, 30], NAN_BLOB), 400, "NaN or infinity"),
    (  # finite in JSON, infinite as the model's FP32: it was refused as "NaN or infinity"
        "oip number past FP32",
        "POST",
        INFER,
        oip([x_tensor(data=[1e39] * 30)]),
        {},
        400,
        "beyond FP32's range",
    ),
    (
        "plain number past FP32",
        "POST",
        PLAIN,
        json.dumps({"instances": [[-1e39] * 30]}).encode(),
        {},
        400,
        "beyond FP32's range",
    ),
    (
        "oip binary size lies",
        "POST",
        INFER,
        *binary([1, 30], NAN_BLOB[:60]),
        400,
        "does not match shape",
    ),
    (
        "oip binary past end",
        "POST",
        INFER,
        *binary([1, 30], NAN_BLOB, size=500),
        400,
        "past the end",
    ),
    (
        "oip header length bad",
        "POST",
        INFER,
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        400,
        "outside the body",
    ),
    (
        "oip bytes element too long",
        "POST",
        INFER,
        *binary([1], struct.pack("<I", 99) + b"ab", datatype="BYTES"),
        400,
        "runs past binary_data_size",
    ),
    (
        "oip unknown version",
        "POST",
        "/v2/models/cancer/versions/v9/infer",
        oip([x_tensor()]),
        {},
        400,
        "no model version 'v9'",
    ),
    (
        "oip unknown version metadata",
        "GET",
        "/v2/models/cancer/versions/v9",
        None,
        {},
        404,
        "no model version 'v9'",
    ),
    (
        "plain unknown pinned variant",
        "POST",
        PLAIN,
        json.dumps({"instances": [ROW]}).encode(),
        {"x-gateway-variant": "nope"},
        400,
        "has no variant 'nope'",
    ),
    (
        "oip unknown pinned variant",
        "POST",
        INFER,
        oip([x_tensor()]),
        {"x-gateway-variant": "nope"},
        400,
        "has no variant 'nope'",
    ),
    (
        "plain routing key too long",
        "POST",
        PLAIN,
        json.dumps({"instances": [ROW]}).encode(),
        {"x-user-id": "k" * 300},
        400,
        "routing key",
    ),
    (
        "oip unknown model",
        "POST",
        "/v2/models/nope/infer",
        oip([x_tensor()]),
        {},
        404,
        "unknown endpoint",
    ),
    ("oip unknown model metadata", "GET", "/v2/models/nope", None, {}, 404, "unknown endpoint"),
    ("oip unknown route", "GET", "/v2/models/cancer/nothing", None, {}, 404, "no route"),
]


async def send(session, method, path, body, headers, base):
    async with session.request(method, f"{base}{path}", data=body, headers=headers) as answer:
        return answer.status, answer.headers.get("content-type", ""), await answer.read()


async def good_request(session, base) -> bool:
    async with session.post(f"{base}{PLAIN}", json={"instances": [ROW]}) as answer:
        body = await answer.json()
        return answer.status == 200 and body["predictions"][0]["label"] in {"benign", "malignant"}


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
async def test_bad_request_gets_a_clear_4xx(gateway_url, case):
    name, method, path, body, headers, status, words = case
    async with aiohttp.ClientSession() as session:
        got, content_type, raw = await send(session, method, path, body, headers, gateway_url)
        assert got == status, raw
        assert content_type.startswith("application/json")
        error = json.loads(raw)["error"]
        assert isinstance(error, str) and words in error
        assert await good_request(session, gateway_url), "the gateway must still serve"


async def test_corpus_mixed_with_good_traffic_loses_nothing(gateway_url):
    async with aiohttp.ClientSession() as session:
        bad = [send(session, c[1], c[2], c[3], c[4], gateway_url) for c in CORPUS] * 3
        good = [good_request(session, gateway_url) for _ in range(60)]
        results = await asyncio.gather(*bad, *good)
    statuses = [r[0] for r in results[: len(bad)]]
    assert all(400 <= s < 500 for s in statuses), statuses
    assert all(results[len(bad) :]), "every good request answered correctly"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway_url}/metrics", headers=METRICS_AUTH) as answer:
            metrics = await answer.text()
    assert 'outcome="error"' in metrics  # the series are there, and none has counted
    errors = [
        line
        for line in metrics.splitlines()
        if 'outcome="error"' in line and not line.endswith(" 0.0")
    ]
    assert errors == []
