"""tritonclient.http, unmodified, against the real gateway: binary and JSON tensors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service import registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(gateway_url):
    return triton.InferenceServerClient(gateway_url.removeprefix("http://"))


@pytest.fixture(scope="module")
def features(demo_models) -> np.ndarray:
    rows = pd.read_csv(demo_models["cancer:v1"].test_path).drop(columns=["label"])
    return rows.to_numpy(np.float32)[:16]


def expected(tag: str, x: np.ndarray):
    session = ort.InferenceSession(str(registry.model_dir(tag) / "model.onnx"))
    return session.run(None, {"X": x})


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cancer") and client.is_model_ready("cancer", "v2")
    assert not client.is_model_ready("cancer", "v9")
    assert client.get_server_metadata()["name"] == "onnx-gateway"
    metadata = client.get_model_metadata("cancer", "v1")
    assert metadata["inputs"][0]["shape"] == [-1, 30]
    assert client.get_model_config("cancer")["platform"] == "onnxruntime_onnx"
    index = client.get_model_repository_index()
    assert {"name": "diabetes", "version": "v1", "state": "READY"} in index


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_pinned_version_matches_onnxruntime(client, features, binary):
    tensor = triton.InferInput("X", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("cancer", [tensor], model_version="v2", outputs=outputs, request_id="t-1")
    labels, probabilities = expected("cancer:v2", features)
    got = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert got == labels.tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5)
    response = result.get_response()
    assert response["model_version"] == "v2" and response["id"] == "t-1"


def test_infer_routed_without_outputs_list_is_all_binary(client, features):
    tensor = triton.InferInput("X", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    result = client.infer("cancer", [tensor])
    version = result.get_response()["model_version"]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected(f"cancer:{version}", features)[1], rtol=1e-5
    )


def test_compressed_request(client, features):
    tensor = triton.InferInput("X", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    result = client.infer(
        "cancer", [tensor], model_version="v1", request_compression_algorithm="gzip"
    )
    assert result.as_numpy("label").shape == (16,)


def test_errors_reach_the_client_as_messages(client, features):
    tensor = triton.InferInput("X", [16, 29], "FP32")
    tensor.set_data_from_numpy(features[:, :29])
    with pytest.raises(InferenceServerException, match="expects \\[-1, 30\\]"):
        client.infer("cancer", [tensor])
    with pytest.raises(InferenceServerException, match="unknown endpoint 'nope'"):
        client.infer("nope", [tensor])


def test_inference_statistics_count_this_clients_requests(client, features):
    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("cancer", "v1")["model_stats"][0]
        return stats["inference_stats"]["success"]["count"], stats["inference_count"]

    before_requests, before_rows = counts()
    tensor = triton.InferInput("X", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    for _ in range(3):
        client.infer("cancer", [tensor], model_version="v1")
    after_requests, after_rows = counts()
    assert after_requests - before_requests == 3
    assert after_rows - before_rows == 3 * len(features)
    everything = client.get_inference_statistics("cancer")["model_stats"]
    assert [s["version"] for s in everything] == ["v1", "v2"]
