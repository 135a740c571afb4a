"""The real gateway over HTTP (aiohttp): plain JSON predictions, OIP v2, health and metrics."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Mapping

import aiohttp
import numpy as np
import pandas as pd
import pytest

from service import registry
from tests.helpers import metric_total, scrape

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_rows(demo_models) -> pd.DataFrame:
    return pd.read_csv(demo_models["cancer:v1"].test_path)


async def post(url: str, body, headers=None) -> tuple[int, Mapping, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=data, headers=headers or {}) as answer:
            return answer.status, answer.headers.copy(), json.loads(await answer.read())


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as answer:
            return answer.status, json.loads(await answer.read())


async def test_plain_rows_as_lists_and_records(gateway_url, test_rows):
    features = test_rows.drop(columns=["label"])
    rows = features.head(5)
    body = {"instances": rows.to_numpy().tolist()[:3] + rows.iloc[3:].to_dict("records")}
    status, headers, answer = await post(
        f"{gateway_url}/predict/cancer", body, {"x-request-id": "req-42"}
    )
    assert status == 200
    assert answer["correlation_id"] == headers["x-request-id"] == "req-42"  # echoed, not a key
    assert answer["request_id"] == headers["x-gateway-request-id"]
    assert answer["request_id"].startswith("cancer:") and len(answer["request_id"]) == 39
    assert headers["x-gateway-variant"] == answer["variant"] in {"stable", "candidate"}
    assert headers["x-gateway-model-version"] == answer["model_version"] in {"v1", "v2"}
    assert len(answer["predictions"]) == 5
    assert {p["label"] for p in answer["predictions"]} <= {"benign", "malignant"}
    for prediction in answer["predictions"]:
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
        assert prediction["label"] == max(
            prediction["probabilities"], key=prediction["probabilities"].get
        )


async def test_plain_answers_match_in_process_onnxruntime(gateway_url, test_rows):
    import onnxruntime as ort

    x = test_rows.drop(columns=["label"]).to_numpy(np.float32)[:50]
    status, _, answer = await post(
        f"{gateway_url}/v2/models/cancer/versions/v2/infer",
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ],
        },
    )
    assert status == 200 and answer["model_version"] == "v2"
    session = ort.InferenceSession(str(registry.model_dir("cancer:v2") / "model.onnx"))
    labels, probabilities = session.run(None, {"X": x})
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == labels.tolist()
    assert outputs["probabilities"]["shape"] == [50, 2]
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(50, 2), probabilities, rtol=1e-5
    )


async def test_regression_endpoint(gateway_url, demo_models):
    rows = pd.read_csv(demo_models["diabetes:v1"].test_path).drop(columns=["label"]).head(3)
    status, _, answer = await post(
        f"{gateway_url}/predict/diabetes", {"instances": rows.to_dict("records")}
    )
    assert status == 200
    assert all(isinstance(p["value"], float) for p in answer["predictions"])


async def test_traffic_is_split_between_variants(gateway_url, test_rows):
    row = test_rows.drop(columns=["label"]).iloc[0].tolist()
    seen = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            async with session.post(
                f"{gateway_url}/predict/cancer", json={"instances": [row]}
            ) as answer:
                assert answer.status == 200
                seen[answer.headers["x-gateway-variant"]] += 1
    assert seen["candidate"] > 0 and seen["stable"] > seen["candidate"]


async def test_gzip_body(gateway_url, test_rows):
    row = test_rows.drop(columns=["label"]).iloc[0].tolist()
    body = gzip.compress(json.dumps({"instances": [row]}).encode())
    status, _, answer = await post(
        f"{gateway_url}/predict/cancer", body, {"Content-Encoding": "gzip"}
    )
    assert status == 200 and len(answer["predictions"]) == 1


async def test_oip_metadata_config_and_index(gateway_url):
    status, server = await get(f"{gateway_url}/v2")
    assert status == 200 and "binary_tensor_data" in server["extensions"]
    status, metadata = await get(f"{gateway_url}/v2/models/cancer")
    assert metadata["versions"] == ["v1", "v2"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
    status, pinned = await get(f"{gateway_url}/v2/models/cancer/versions/v2")
    assert pinned["versions"] == ["v2"]
    status, config = await get(f"{gateway_url}/v2/models/cancer/config")
    assert config["max_batch_size"] == 100 and config["input"][0]["dims"] == [30]
    status, _, index = await post(f"{gateway_url}/v2/repository/index", b"")
    assert {(m["name"], m["version"]) for m in index} == {
        ("cancer", "v1"),
        ("cancer", "v2"),
        ("diabetes", "v1"),
    }
    status, endpoints = await get(f"{gateway_url}/endpoints")
    assert endpoints["endpoints"]["cancer"]["variants"][0]["provider"] == "CPUExecutionProvider"


async def test_health_and_readiness(gateway_url):
    for path in (
        "/livez",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/cancer/ready",
    ):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gateway_url}{path}") as answer:
                assert answer.status == 200, path
    status, _ = await get(f"{gateway_url}/v2/models/cancer/versions/v7/ready")
    assert status == 404


async def test_metrics_count_requests_by_variant_and_outcome(gateway_url, test_rows):
    async def scrape_gateway() -> str:
        async with aiohttp.ClientSession() as session:
            return await scrape(session, gateway_url)

    ok = 'gateway_requests_total{endpoint="diabetes",model_version="v1",outcome="ok",protocol="plain",variant="stable"}'
    bad = 'gateway_requests_total{endpoint="diabetes",model_version="v1",outcome="client_error",protocol="plain",variant="stable"}'
    before = await scrape_gateway()
    for _ in range(7):
        await post(f"{gateway_url}/predict/diabetes", {"instances": [[0.0] * 10]})
    for _ in range(3):
        await post(f"{gateway_url}/predict/diabetes", {"instances": [[0.0] * 9]})
    after = await scrape_gateway()
    assert metric_total(after, ok) - metric_total(before, ok) == 7
    assert metric_total(after, bad) - metric_total(before, bad) == 3
    assert (
        'gateway_request_duration_seconds_bucket{endpoint="diabetes",le="0.1",variant="stable"}'
        in after
    )
    assert (
        'gateway_model_loaded{model="cancer",model_version="v1",provider="CPUExecutionProvider"} 1.0'
        in after
    )


async def test_explanations_from_the_real_server_add_up_and_come_from_the_keys_variant(
    gateway_url, test_rows
):
    """``/explain`` in a real worker (its explanation process spawned from it): the same variant
    as ``/predict`` for the key, one explanation per row adding up to ``/predict``'s probability,
    and a wrong width is a 400."""
    rows = test_rows.drop(columns=["label"]).head(3).to_numpy().tolist()
    for key in ("u-1", "u-2", "u-3", "u-4"):
        headers = {"x-user-id": key}
        status, _, predicted = await post(
            f"{gateway_url}/predict/cancer", {"instances": rows}, headers
        )
        status, _, explained = await post(
            f"{gateway_url}/explain/cancer", {"instances": rows}, headers
        )
        assert status == 200, explained
        assert explained["variant"] == predicted["variant"]
        assert len(explained["explanations"]) == 3
        for prediction, explanation in zip(predicted["predictions"], explained["explanations"]):
            assert set(explanation["values"]) == set(registry.load_card("cancer:v1").feature_names)
            total = explanation["base_value"] + sum(explanation["values"].values())
            assert abs(total - prediction["probabilities"][explanation["target"]]) < 0.02
    status, _, error = await post(f"{gateway_url}/explain/cancer", {"instances": [rows[0][:4]]})
    assert status == 400 and "30" in error["error"]
