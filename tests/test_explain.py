"""Explanations through the gateway built in-process on the demo models: they add up to the
answer /predict gives, match a linear model's closed form, come from the variant that answers the
same key, and bad requests are 4xx."""

from __future__ import annotations

import asyncio
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import pytest_asyncio

from service import registry
from tests.helpers import ROW, in_process_gateway, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(demo_models, tmp_path_factory):
    """One gateway for the module: its explanation process starts once (a few seconds)."""
    directory = tmp_path_factory.mktemp("explain")
    config = write_config(
        directory / "gateway.yaml",
        data_dir=str(directory / "data"),
        explain={"background_rows": 1000, "max_rows": 8},
    )
    async with in_process_gateway(config) as (gateway, client):
        yield gateway, client


async def test_attributions_add_up_to_the_probability_predict_gives(served):
    rows = [ROW, [v * 1.1 for v in ROW]]
    _, client = served
    for key in ("user-1", "user-7", "user-11"):
        headers = {"x-user-id": key}
        predicted = await client.post("/predict/cancer", json={"instances": rows}, headers=headers)
        explained = await client.post("/explain/cancer", json={"instances": rows}, headers=headers)
        assert explained.status_code == 200, explained.text
        body, answer = explained.json(), predicted.json()
        assert body["variant"] == answer["variant"], "the variant that answers the key"
        assert body["predictions"] == answer["predictions"]
        for prediction, explanation in zip(answer["predictions"], body["explanations"]):
            target = explanation["target"]
            assert target == prediction["label"]  # by default: the class it predicted
            total = explanation["base_value"] + sum(explanation["values"].values())
            assert total == pytest.approx(prediction["probabilities"][target], abs=0.01)
            assert len(explanation["values"]) == 30


async def test_another_class_may_be_named(served):
    _, client = served
    answer = await client.post("/explain/cancer?target=benign", json={"instances": [ROW]})
    unknown = await client.post("/explain/cancer?target=nope", json={"instances": [ROW]})
    [explanation] = answer.json()["explanations"]
    probabilities = answer.json()["predictions"][0]["probabilities"]
    assert explanation["target"] == "benign"
    total = explanation["base_value"] + sum(explanation["values"].values())
    assert total == pytest.approx(probabilities["benign"], abs=0.01)
    assert unknown.status_code == 400 and "benign" in unknown.json()["error"]


async def test_a_linear_models_attributions_are_coefficient_times_distance_from_the_mean(
    served, demo_models
):
    """The ridge regressor: SHAP value = coefficient x (x - background mean); the coefficients
    are read off /predict itself (one unit step per feature)."""
    reference = pd.read_csv(demo_models["diabetes:v1"].reference_path).drop(columns=["label"])
    row = reference.iloc[3].to_numpy(dtype=float)
    steps = [row + np.eye(len(row))[i] for i in range(len(row))]
    _, client = served
    answers = await client.post(
        "/predict/diabetes", json={"instances": [row.tolist(), *[s.tolist() for s in steps]]}
    )
    explained = await client.post("/explain/diabetes", json={"instances": [row.tolist()]})
    values = [p["value"] if isinstance(p, dict) else p for p in answers.json()["predictions"]]
    coefficients = np.array(values[1:]) - values[0]
    expected = coefficients * (row - reference.to_numpy(dtype=float).mean(axis=0))
    [explanation] = explained.json()["explanations"]
    assert explanation["target"] == "value"
    got = np.array([explanation["values"][name] for name in reference.columns])
    assert got == pytest.approx(expected, abs=0.05 * np.abs(expected).max())
    assert explanation["base_value"] + got.sum() == pytest.approx(values[0], abs=0.02)


async def test_oip_explain_answers_like_infer_with_explanations(served):
    body = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    _, client = served
    answer = await client.post("/v2/models/cancer/explain", json=body)
    pinned = await client.post("/v2/models/cancer/versions/v2/explain", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    [explanation] = answer.json()["explanations"]
    total = explanation["base_value"] + sum(explanation["values"].values())
    label = outputs["label"][0]
    assert explanation["target"] == label
    assert total == pytest.approx(
        outputs["probabilities"][["benign", "malignant"].index(label)], abs=0.01
    )
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "v2"  # pinned, as infer


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/explain/cancer", {"instances": [ROW[:5]]}, 400, "30"),
        ("/explain/cancer", {"instances": [ROW] * 9}, 400, "at most 8 rows"),
        ("/explain/cancer", {"rows": [ROW]}, 400, "instances"),
        ("/explain/nope", {"instances": [ROW]}, 404, "unknown endpoint"),
        ("/explain/diabetes?target=x", {"instances": [ROW[:10]]}, 400, "one target"),
        ("/v2/models/cancer/explain", {"inputs": []}, 400, ""),
        (
            "/v2/models/cancer/explain",
            {"inputs": [{"name": "Y", "shape": [1, 30], "datatype": "FP32", "data": ROW}]},
            400,
            "X",
        ),
        (
            "/v2/models/cancer/explain",
            {"inputs": [{"name": "X", "shape": [9, 30], "datatype": "FP32", "data": ROW * 9}]},
            400,
            "at most 8 rows",
        ),
    ],
)
async def test_bad_explain_requests_are_clear_4xx_and_the_gateway_serves_on(
    served, path, body, status, words
):
    gateway, client = served
    endpoint = "cancer" if path.startswith("/v2/") else path.split("/")[2].split("?")[0]
    labels = {"endpoint": endpoint, "outcome": "client_error"}

    def refused() -> float:
        return (
            gateway.metrics.registry.get_sample_value("gateway_explain_requests_total", labels) or 0
        )

    before = refused()
    answer = await client.post(path, json=body)
    counted = refused() - before
    after = await client.post("/explain/cancer", json={"instances": [ROW]})
    assert answer.status_code == status and words in answer.json()["error"], answer.text
    assert after.status_code == 200, "the gateway serves on"
    assert counted == (1 if status == 400 else 0)  # an unknown endpoint has no series


async def test_too_many_waiting_explanations_are_refused_with_retry_after(served, monkeypatch):
    """Refused before the body is read and the model runs for it: a refusal cost what an
    answer does, and sixteen callers asking without pause took most of the worker."""
    gateway, client = served
    inferred = []
    infer = gateway.dataplane.infer
    monkeypatch.setattr(gateway.dataplane, "infer", lambda *a: inferred.append(1) or infer(*a))
    gateway.explainer.waiting = gateway.config.explain.max_waiting  # as if that many were busy
    refused = await client.post("/explain/cancer", json={"instances": [ROW]})
    malformed = await client.post("/explain/cancer", content=b"{not json")
    gateway.explainer.waiting = 0
    served = await client.post("/predict/cancer", json={"instances": [ROW]})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert malformed.status_code == 429, "refused before its body is read"
    assert served.status_code == 200 and len(inferred) == 1  # the prediction's alone


async def test_the_explanation_process_yields_to_its_worker():
    """It runs at ten nice levels more than its worker: at the same priority, a flood of
    explanations took a core from the predictions."""
    from service.gateway import explain

    pool = explain.Explainer(explain.ExplainConfig())._process()
    try:
        child = await asyncio.get_running_loop().run_in_executor(pool, os.getpid)
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + explain.NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, child) == expected
    finally:
        pool.shutdown()


async def test_predict_is_not_slowed_while_explanations_run(served):
    """Explanations run in their own process: /predict latency while one is being computed stays
    what it is without (median of 50 sequential calls, within 2 ms)."""
    _, client = served
    await client.post("/explain/cancer", json={"instances": [ROW]})  # the process is up

    async def median_predict_ms() -> float:
        times = []
        for _ in range(50):
            started = asyncio.get_running_loop().time()
            await client.post("/predict/cancer", json={"instances": [ROW]})
            times.append(asyncio.get_running_loop().time() - started)
        return float(np.median(times) * 1000)

    quiet = await median_predict_ms()
    busy = asyncio.create_task(client.post("/explain/cancer", json={"instances": [ROW] * 8}))
    await asyncio.sleep(0.05)
    loaded = await median_predict_ms()
    assert not busy.done(), "the explanation outlasted the measurement"
    await busy
    print(f"/predict median: {quiet:.2f} ms quiet, {loaded:.2f} ms while explaining")
    assert loaded < quiet + 2.0


async def test_an_explanation_process_that_died_is_a_503_and_the_next_call_starts_another(served):
    """The explanation process killed (the kernel's OOM killer, an operator): the call it was
    running gets a 503 with Retry-After, not a 500, and the next call starts a new process (a
    broken pool answered 500 to every call until the gateway restarted)."""
    gateway, client = served
    assert (await client.post("/explain/cancer", json={"instances": [ROW]})).status_code == 200
    process = next(iter(gateway.explainer._pool._processes.values()))
    killing = asyncio.get_running_loop().call_later(0.05, process.kill)
    stopped = await client.post("/explain/cancer", json={"instances": [ROW] * 8})
    killing.cancel()
    assert stopped.status_code == 503, stopped.text
    assert "explanation process stopped" in stopped.json()["error"]
    assert int(stopped.headers["retry-after"]) >= 1
    again = await client.post("/explain/cancer", json={"instances": [ROW]})
    assert again.status_code == 200, again.text


async def test_a_model_whose_files_left_the_store_is_a_503_and_predictions_go_on(
    demo_models, tmp_path
):
    """The explanation process loads a model from the model store; one removed from it while
    served (the worker answers from memory) was a 500."""
    v1 = demo_models["cancer:v1"]
    tag = registry.add_model(v1.onnx_path, "cancer", v1.reference_path, version="v6-gone").tag
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        endpoints={"gone": {"variants": [{"name": "stable", "model": tag}]}},
    )
    async with in_process_gateway(config) as (_, client):
        shutil.rmtree(registry.model_dir(tag))
        explained = await client.post("/explain/gone", json={"instances": [ROW]})
        assert explained.status_code == 503, explained.text
        assert f"model {tag} is not in the model store" in explained.json()["error"]
        predicted = await client.post("/predict/gone", json={"instances": [ROW]})
        assert predicted.status_code == 200
