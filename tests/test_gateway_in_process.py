"""The gateway built in-process on the demo models: the request path, routing changes and
recording, through the same app and gate BentoML serves, without starting a server.

These run in a second or two where the same checks through ``bentoml serve`` take minutes; the
integration tests (test_server_*.py) still prove the real server.
"""

from __future__ import annotations

import asyncio

import aiohttp.web
import numpy as np
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from monitors.records import decode_batch
from service import registry
from tests.helpers import (
    ADMIN_AUTH,
    ROW,
    in_process_gateway,
    loopback_receiver,
    write_config,
    write_graph,
)

KEYS = [f"user-{i}" for i in range(200)]


@pytest.fixture
async def monitor():
    """A loopback stand-in for the monitor that keeps every record batch it is sent."""
    records = []

    async def take(request: aiohttp.web.Request) -> aiohttp.web.Response:
        records.extend(decode_batch(await request.read()))
        return aiohttp.web.json_response({"stored": len(records)})

    url, cleanup = await loopback_receiver("/records", take)
    yield url.removesuffix("/records"), records
    await cleanup()


@pytest.fixture
def config(demo_models, tmp_path, monitor, monkeypatch):
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_AUTH["Authorization"].split()[1])
    url, _ = monitor
    return write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor={"url": url, "flush_interval_ms": 20},
    )


async def test_a_prediction_is_routed_run_counted_and_recorded(config, monitor):
    _, records = monitor
    async with in_process_gateway(config) as (gateway, client):
        answer = await client.post(
            "/predict/cancer",
            json={"instances": [ROW, ROW]},
            headers={"x-user-id": "user-1", "x-request-id": "caller-1"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        expected = gateway.dataplane.table("cancer").route("user-1").variant.name
        assert body["variant"] == expected == answer.headers["x-gateway-variant"]
        assert len(body["predictions"]) == 2 and body["correlation_id"] == "caller-1"
        requests = gateway.metrics.registry.get_sample_value(
            "gateway_requests_total",
            {
                "endpoint": "cancer",
                "variant": expected,
                "model_version": body["model_version"],
                "protocol": "plain",
                "outcome": "ok",
            },
        )
        assert requests == 1
        for _ in range(100):
            if records:
                break
            await asyncio.sleep(0.02)
    [record] = records
    assert record.request_id == body["request_id"] and record.variant == expected
    assert record.correlation_id == "caller-1" and len(record.predictions) == 2


async def test_past_its_input_rate_a_variant_records_every_answer_but_a_sample_of_inputs(
    demo_models, tmp_path, monitor
):
    """``monitor.input_rows_per_s`` (monitors/records.py ``InputSampler``): the first second keeps
    every input, then about that many rows a second; every answer is still recorded."""
    url, records = monitor
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor={"url": url, "flush_interval_ms": 20, "input_rows_per_s": 5},
    )
    async with in_process_gateway(config) as (_, client):
        sent, stop = 0, asyncio.get_running_loop().time() + 3.5
        while asyncio.get_running_loop().time() < stop:
            answer = await client.post("/predict/diabetes", json={"instances": [[0.5] * 10]})
            assert answer.status_code == 200, answer.text
            sent += 1
        for _ in range(100):
            if len(records) == sent:
                break
            await asyncio.sleep(0.05)
    assert len(records) == sent > 200
    first = min(r.at for r in records)
    later = [r for r in records if r.at >= first + 1.2]  # after the first whole second
    kept = [r for r in later if r.inputs is not None]
    seconds = max(r.at for r in later) - first - 1.2
    print(f"{sent} answers, {len(kept)} of {len(later)} after the first second kept inputs")
    assert 0 < len(kept) / seconds < 20 and len(kept) < len(later) / 3
    assert all(r.inputs == [[0.5] * 10] for r in kept)


@pytest.mark.alone
async def test_refused_callers_are_held_no_longer_than_max_hold_ms(demo_models, tmp_path, monitor):
    """``admission.max_hold_ms`` bounds how long a refusal is held, however many callers are
    refused: here one slot, a slow model (1.5 s) and a refusal rate that alone would hold the
    later callers for 1 to 4 s; each 429 comes back within the 0.2 s cap (at the cap, holds
    are drawn between half and all of it)."""
    url, _ = monitor
    slow = {"delay_ms": 1500}
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor={"url": url},
        admission={
            "min_concurrency": 1,
            "max_concurrency": 1,
            "max_refusals_per_s": 1,
            "max_hold_ms": 200,
        },
        endpoints={
            "diabetes": {"variants": [{"name": "stable", "model": "diabetes:v1", "faults": slow}]}
        },
    )
    async with in_process_gateway(config) as (_, client):
        loop = asyncio.get_running_loop()

        async def call() -> tuple[int, float, str | None]:
            started = loop.time()
            answer = await client.post("/predict/diabetes", json={"instances": [[0.5] * 10]})
            return answer.status_code, loop.time() - started, answer.headers.get("retry-after")

        first = asyncio.create_task(call())
        await asyncio.sleep(0.05)  # the first caller holds the one slot
        refused = await asyncio.gather(*(call() for _ in range(4)))
        assert [status for status, _, _ in refused] == [429] * 4
        assert all(0.05 < took < 0.6 and retry_after for _, took, retry_after in refused), refused
        status, took, _ = await first
        assert status == 200 and took > 1.4


async def test_oip_and_plain_answer_alike_through_the_one_call(config):
    async with in_process_gateway(config) as (_, client):
        plain = await client.post(
            "/predict/cancer", json={"instances": [ROW]}, headers={"x-user-id": "u"}
        )
        oip = await client.post(
            "/v2/models/cancer/infer",
            json={"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]},
            headers={"x-user-id": "u"},
        )
    assert plain.status_code == 200 and oip.status_code == 200, oip.text
    assert plain.headers["x-gateway-variant"] == oip.headers["x-gateway-variant"]
    label = {o["name"]: o["data"] for o in oip.json()["outputs"]}["label"]
    assert [plain.json()["predictions"][0]["label"]] == label


async def test_a_bad_request_is_a_4xx_counted_and_kept_from_the_monitor(config, monitor):
    _, records = monitor
    async with in_process_gateway(config) as (gateway, client):
        short = await client.post("/predict/cancer", json={"instances": [ROW[:3]]})
        unknown = await client.post("/predict/nope", json={"instances": [ROW]})
        after = await client.post("/predict/cancer", json={"instances": [ROW]})
        await asyncio.sleep(0.1)
        client_errors = sum(
            gateway.metrics.registry.get_sample_value(
                "gateway_requests_total",
                {
                    "endpoint": "cancer",
                    "variant": variant,
                    "model_version": version,
                    "protocol": "plain",
                    "outcome": "client_error",
                },
            )
            or 0
            for variant, version in (("stable", "v1"), ("candidate", "v2"), ("none", "none"))
        )
    assert short.status_code == 400 and "30" in short.json()["error"], short.text
    assert unknown.status_code == 404 and "cancer" in unknown.json()["error"]
    assert after.status_code == 200, "still serves afterwards"
    assert client_errors == 1
    assert [r.request_id for r in records] == [after.json()["request_id"]]


async def test_a_weight_change_is_saved_audited_and_followed_at_once(config):
    async with in_process_gateway(config) as (gateway, client):
        before = gateway.dataplane.snapshot.version
        changed = await client.put(
            "/admin/endpoints/cancer/weights",
            json={"weights": {"stable": 0, "candidate": 100}},
            headers=ADMIN_AUTH,
        )
        assert changed.status_code == 200, changed.text
        assert gateway.dataplane.snapshot.version == before + 1
        answers = [
            await client.post(
                "/predict/cancer", json={"instances": [ROW]}, headers={"x-user-id": key}
            )
            for key in KEYS[:20]
        ]
        assert {a.headers["x-gateway-variant"] for a in answers} == {"candidate"}
        refused = await client.put(
            "/admin/endpoints/cancer/weights", json={"weights": {"stable": 100, "candidate": 0}}
        )
        assert refused.status_code == 401
        audit = await client.get("/admin/audit", headers=ADMIN_AUTH)
    assert refused.status_code == 401 and gateway.dataplane.snapshot.version == before + 1
    actions = [entry["action"] for entry in audit.json()["entries"]]
    assert actions[0] == "set_weights" and actions.count("set_weights") == 1


async def test_a_change_that_changes_nothing_makes_no_version(config):
    """A weight set again, or a reload of a file nobody edited (a config sync that reloads every
    minute), saved a new routing version, which every worker and replica installed, and an audit
    entry. Now it answers the routing as it is, ``changed`` false, and only counts."""
    weights = {"weights": {"stable": 50, "candidate": 50}}
    async with in_process_gateway(config) as (gateway, client):
        first = await client.put(
            "/admin/endpoints/cancer/weights", json=weights, headers=ADMIN_AUTH
        )
        assert first.status_code == 200 and first.json()["changed"], first.text
        version = gateway.dataplane.snapshot.version
        again = await client.put(
            "/admin/endpoints/cancer/weights", json=weights, headers=ADMIN_AUTH
        )
        reloaded = await client.post("/admin/reload", headers=ADMIN_AUTH)
        assert reloaded.status_code == 200, reloaded.text
        reloaded_again = await client.post("/admin/reload", headers=ADMIN_AUTH)
        audit = await client.get("/admin/audit", headers=ADMIN_AUTH)
        unchanged = gateway.metrics.registry.get_sample_value(
            "gateway_admin_changes_total", {"action": "set_weights", "outcome": "unchanged"}
        )
    assert again.status_code == 200 and not again.json()["changed"], again.text
    assert again.json()["version"] == version and gateway.dataplane.snapshot.version >= version
    assert reloaded_again.status_code == 200 and not reloaded_again.json()["changed"]
    assert reloaded_again.json()["version"] == reloaded.json()["version"]
    actions = [entry["action"] for entry in audit.json()["entries"]]
    assert actions.count("set_weights") == 1 and actions.count("reload") <= 1
    assert unchanged == 1


async def test_a_worker_asked_for_what_another_just_set_answers_it_as_it_is(config):
    """The change is already in the store, made through another worker this one has not
    followed yet: nothing is saved, and this worker installs the stored state, so that its
    answer (the routing it serves) is not the one from before."""
    from prometheus_client import CollectorRegistry

    from service.config import load_config
    from service.gateway.process import Gateway

    weights = {"stable": 30, "candidate": 70}

    def set_weights(state):
        return {**state.tables, "cancer": state.tables["cancer"].with_weights(weights)}

    behind = Gateway.start(config, load_config(config), CollectorRegistry())  # follows nothing
    try:
        async with in_process_gateway(config) as (_, client):
            body = {"weights": weights}
            changed = await client.put(
                "/admin/endpoints/cancer/weights", json=body, headers=ADMIN_AUTH
            )
            assert changed.status_code == 200, changed.text
        assert behind.dataplane.snapshot.version < changed.json()["version"]
        swap = await behind.routing.change("test", "set_weights", "cancer", {}, set_weights)
        assert swap.after is None
        snapshot = behind.dataplane.snapshot
        assert snapshot.version == changed.json()["version"]
        served = {v.name: v.weight for v in snapshot.tables["cancer"].variants}
        assert served == weights
    finally:
        await behind.close()


async def test_a_reload_keeps_run_time_changes_to_the_endpoints_the_file_left_alone(config):
    """A reload made every endpoint gateway.yaml's: one that only added an endpoint set a
    split (or a rollout's promotion) made at run time back to the file's. Now an endpoint the
    file left as it was keeps it, and one it changed is the file's."""
    import yaml

    def split(answer) -> dict[str, float]:
        variants = answer.json()["endpoints"]["cancer"]["variants"]
        return {v["name"]: v["weight"] for v in variants}

    async with in_process_gateway(config) as (gateway, client):
        turned = await client.put(
            "/admin/endpoints/cancer/weights",
            json={"weights": {"stable": 0, "candidate": 100}},
            headers=ADMIN_AUTH,
        )
        assert turned.status_code == 200, turned.text
        edited = yaml.safe_load(config.read_text())
        edited["endpoints"]["sugar"] = {"variants": [{"name": "stable", "model": "diabetes:v1"}]}
        config.write_text(yaml.safe_dump(edited))
        reloaded = await client.post("/admin/reload", headers=ADMIN_AUTH)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["from_file"] == ["sugar"]
        assert split(reloaded) == {"stable": 0, "candidate": 100}
        edited["endpoints"]["cancer"]["variants"][1]["weight"] = 20
        config.write_text(yaml.safe_dump(edited))
        again = await client.post("/admin/reload", headers=ADMIN_AUTH)
        assert again.status_code == 200, again.text
        assert again.json()["from_file"] == ["cancer"]
        assert split(again) == {"stable": 90, "candidate": 20}


async def test_a_change_made_by_another_worker_is_followed(config):
    """Two gateways on one store, as two workers are: a change through one reaches the other
    by the routing follower, and the compare-and-swap keeps both writers' changes."""
    async with (
        in_process_gateway(config) as (first, first_client),
        in_process_gateway(config) as (second, _),
    ):
        changed = await first_client.put(
            "/admin/endpoints/cancer/weights",
            json={"weights": {"stable": 50, "candidate": 50}},
            headers=ADMIN_AUTH,
        )
        assert changed.status_code == 200
        version = changed.json()["version"]
        for _ in range(100):
            if second.dataplane.snapshot.version == version:
                break
            await asyncio.sleep(0.02)
        table = second.dataplane.table("cancer")
    assert second.dataplane.snapshot.version == version, "the second worker followed"
    assert table.variant("candidate").weight == 50
    assert first.dataplane.table("cancer") == table


async def test_the_routing_read_is_the_stored_one_or_while_the_store_is_down_the_served_one(
    config, monkeypatch
):
    """A change through one worker is read through the other at once (the other had not yet
    polled it); while the store cannot be read, the other answers with what it serves."""
    from storage.database import StoreUnavailable

    async with (
        in_process_gateway(config) as (first, first_client),
        in_process_gateway(config) as (second, second_client),
    ):
        served = second.dataplane.snapshot.version
        # its follower sees no new version (as until its next poll), so only the read catches up
        monkeypatch.setattr(second.routing.store, "current_version", lambda: served)
        changed = await first_client.put(
            "/admin/endpoints/cancer/weights",
            json={"weights": {"stable": 50, "candidate": 50}},
            headers=ADMIN_AUTH,
        )
        read = await second_client.get("/admin/routing", headers=ADMIN_AUTH)
        assert read.json()["version"] == changed.json()["version"] != served

        def down():
            raise StoreUnavailable("the database is restarting")

        monkeypatch.setattr(second.routing.store, "load", down)
        await first_client.put(
            "/admin/endpoints/cancer/weights",
            json={"weights": {"stable": 60, "candidate": 40}},
            headers=ADMIN_AUTH,
        )
        read = await second_client.get("/admin/routing", headers=ADMIN_AUTH)
    assert read.status_code == 200 and read.json()["version"] == changed.json()["version"]


async def test_an_admin_change_the_store_cannot_take_is_a_503_without_the_drivers_words(
    config, monkeypatch
):
    """The database's address and user, in psycopg's words, go to the log, not to the caller."""
    from storage.database import StoreUnavailable

    words = 'connection to server at "10.0.4.7", port 5432 failed: FATAL: role "gateway"'

    def down():
        raise StoreUnavailable(f"{StoreUnavailable.summary}: {words}")

    async with in_process_gateway(config) as (gateway, client):
        monkeypatch.setattr(gateway.routing.store, "load", down)
        answer = await client.put(
            "/admin/endpoints/cancer/weights",
            json={"weights": {"stable": 50, "candidate": 50}},
            headers=ADMIN_AUTH,
        )
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": "the database is unavailable; nothing was changed"}


async def test_oip_statistics_are_current_and_a_flood_of_them_reads_the_metrics_rarely(
    config, monkeypatch
):
    """Anyone may ask for ``/stats``, and each answer read every worker's metric files twelve
    times (50 ms of the worker): eight callers asking without pause cut predictions 27-fold.
    Calls that arrive together now share one read, which began after they arrived."""
    from service import exposition

    reads = []
    read = exposition._all_workers
    monkeypatch.setattr(
        exposition, "_all_workers", lambda registry: reads.append(1) or read(registry)
    )

    async def served() -> int:
        answer = await client.get("/v2/models/cancer/versions/v1/stats")
        assert answer.status_code == 200, answer.text
        return answer.json()["model_stats"][0]["inference_stats"]["success"]["count"]

    async with in_process_gateway(config) as (_, client):
        before = await served()
        body = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
        for _ in range(3):
            answer = await client.post("/v2/models/cancer/versions/v1/infer", json=body)
            assert answer.status_code == 200
        assert await served() == before + 3 and len(reads) == 2  # read afresh, once each
        flood = await asyncio.gather(*(served() for _ in range(100)))
    assert set(flood) == {before + 3} and len(reads) <= 2 + 3


def register_count_model(tmp_path) -> str:
    """A regressor on two INT64 features (its output: 2 a + 3 b), registered once a session."""
    tag = "counts:v1"
    if tag in {card.tag for card in registry.list_cards()}:
        return tag
    weights = numpy_helper.from_array(np.array([[2.0], [3.0]], np.float32), "W")
    model = write_graph(
        tmp_path / "counts.onnx",
        [
            helper.make_node("Cast", ["X"], ["Xf"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["Xf", "W"], ["Y"]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        [weights],
        input_type=TensorProto.INT64,
    )
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(rng.integers(0, 50, (200, 2)), columns=["a", "b"])
    rows.assign(label=2 * rows.a + 3 * rows.b).to_csv(tmp_path / "counts.csv", index=False)
    return registry.add_model(model, "counts", tmp_path / "counts.csv", version="v1").tag


async def test_a_model_taking_integers_answers_on_the_numbers_sent_or_refuses_them(
    demo_models, tmp_path
):
    tag = register_count_model(tmp_path)
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        endpoints={"counts": {"variants": [{"name": "stable", "model": tag}]}},
    )
    async with in_process_gateway(config) as (_, client):
        for row, words in (([1.5, 2], "not all whole numbers"), ([300.0, 2**70], "out of range")):
            answer = await client.post("/predict/counts", json={"instances": [row]})
            assert answer.status_code == 400 and words in answer.json()["error"], answer.text
        oip = {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "INT64", "data": [7, 2**63]}]}
        answer = await client.post("/v2/models/counts/infer", json=oip)
        assert answer.status_code == 400 and "does not fit" in answer.json()["error"], answer.text
        answer = await client.post(
            "/predict/counts", json={"instances": [[4, 5.0], {"a": 1, "b": 0}]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == [{"value": 23.0}, {"value": 2.0}]
