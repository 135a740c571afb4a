"""Traffic over HTTP on a real 2-worker gateway: sticky keys, weight changes reaching every worker
within a second, pinning, shadow isolation, the admin API and its audit log, persistence."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import statistics
import time
from collections import Counter

import aiohttp
import pytest

from service import registry
from service.config import load_config
from service.launch import running_server
from tests.helpers import metric_sum, predict, write_config

pytestmark = pytest.mark.integration
TOKEN = "s3cret-admin-token-of-traffic"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROW = [1.0] * 30


@pytest.fixture(scope="module")
def traffic_config(demo_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("traffic")
    v1 = demo_models["cancer:v1"]
    for version in ("v3", "v4", "v5"):  # copies of v1: two shadows and one to add by admin
        registry.add_model(v1.onnx_path, "cancer", v1.reference_path, version=version)
    return write_config(
        directory / "gateway.yaml",
        server={"workers": 2},
        data_dir=str(directory / "data"),
        endpoints={
            "cancer": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [
                    {"name": "stable", "model": "cancer:v1", "weight": 90},
                    {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
                    {
                        "name": "slow-shadow",
                        "model": "cancer:v3",
                        "role": "shadow",
                        "mirror": 1.0,
                        "faults": {"delay_ms": 1000},
                    },
                    {
                        "name": "bad-shadow",
                        "model": "cancer:v4",
                        "role": "shadow",
                        "mirror": 1.0,
                        "faults": {"error_rate": 1.0},
                    },
                ],
            },
            "baseline": {"variants": [{"name": "stable", "model": "cancer:v1"}]},
        },
    )


@pytest.fixture(scope="module")
def traffic_url(traffic_config):
    log = traffic_config.parent / "server.log"
    with running_server(traffic_config, log_path=log, env={"GATEWAY_ADMIN_TOKEN": TOKEN}) as url:
        yield url


def fresh_connections() -> aiohttp.ClientSession:
    """A client that opens a new connection per request, so both workers get requests; 16 at a
    time, a steady load (more at once on a 2-core runner is a spike that admission rightly
    sheds, which tests/test_server_overload.py covers)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16))


async def admin(session, url, method, path, body=None, headers=ADMIN):
    async with session.request(method, f"{url}{path}", json=body, headers=headers) as answer:
        return answer.status, json.loads(await answer.read())


async def answers_from_both_workers(url: str, keys: list[str]) -> list[tuple[str, tuple]]:
    """(key, answer) pairs for every key, sent on fresh connections in rounds until both workers
    have answered (the kernel decides which worker accepts each connection)."""
    pairs: list[tuple[str, tuple]] = []
    async with fresh_connections() as session:
        for _ in range(5):
            results = await asyncio.gather(*(predict(session, url, k) for k in keys))
            pairs += list(zip(keys, results))
            if len({answer.worker for _, answer in pairs}) == 2:
                break
    return pairs


def expected_variants(config_path, keys, weights=None):
    table = load_config(config_path).tables()["cancer"]
    if weights:
        table = table.with_weights(weights)
    return {k: table.route(k).variant.name for k in keys}


async def test_keys_are_sticky_on_both_workers_and_match_the_table(traffic_url, traffic_config):
    keys = [f"user-{i}" for i in range(600)]
    async with aiohttp.ClientSession() as session:  # as other tests of this file left them
        _, routing = await admin(session, traffic_url, "GET", "/admin/routing")
    variants = routing["endpoints"]["cancer"]["variants"]
    weights = {v["name"]: v["weight"] for v in variants if v["role"] != "shadow"}
    expected = expected_variants(traffic_config, keys, weights)
    pairs = await answers_from_both_workers(traffic_url, keys * 2)
    assert len({answer.worker for _, answer in pairs}) == 2, "both workers answered"
    wrong = [(key, answer) for key, answer in pairs if answer[:2] != (200, expected[key])]
    assert not wrong, wrong[:5]
    share = Counter(expected.values())["candidate"] / len(keys)
    expected_share = weights["candidate"] / sum(weights.values())
    assert expected_share - 0.04 < share < expected_share + 0.04


@pytest.mark.alone
async def test_shadows_never_slow_or_fail_callers(traffic_url):
    async with aiohttp.ClientSession() as session:
        before_errors = await metric_sum(
            session,
            traffic_url,
            'gateway_shadow_requests_total{endpoint="cancer",outcome="error",variant="bad-shadow"}',
        )
        baseline = [await predict(session, traffic_url, endpoint="baseline") for _ in range(40)]
        mirrored = [await predict(session, traffic_url, f"u{i}") for i in range(40)]
        assert all(status == 200 for status, *_ in baseline + mirrored)
        base_ms = statistics.median(r.seconds for r in baseline) * 1000
        mirrored_ms = statistics.median(r.seconds for r in mirrored) * 1000
        assert mirrored_ms < base_ms + 20, (base_ms, mirrored_ms)
        assert max(r.seconds for r in mirrored) < 0.5  # a 1 s shadow never reaches the caller
        await asyncio.sleep(1.5)  # let the slow shadow finish
        errors = await metric_sum(
            session,
            traffic_url,
            'gateway_shadow_requests_total{endpoint="cancer",outcome="error",variant="bad-shadow"}',
        )
        slow_ok = await metric_sum(
            session,
            traffic_url,
            'gateway_shadow_requests_total{endpoint="cancer",outcome="ok",variant="slow-shadow"}',
        )
        agree = await metric_sum(
            session,
            traffic_url,
            'gateway_shadow_rows_total{agreement="agree",endpoint="cancer",variant="slow-shadow"}',
        )
    assert errors - before_errors == 40
    assert slow_ok >= 40 and agree >= 40  # v3 is a copy of v1: it agrees with the stable rows


async def test_pinning_by_header_and_oip_version(traffic_url):
    async with aiohttp.ClientSession() as session:
        pinned = [
            await predict(session, traffic_url, f"k{i}", headers={"x-gateway-variant": "candidate"})
            for i in range(10)
        ]
        assert {answer.variant for answer in pinned} == {"candidate"}
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": ROW}]}
        async with session.post(
            f"{traffic_url}/v2/models/cancer/versions/v2/infer", json=body
        ) as answer:
            assert answer.status == 200 and answer.headers["x-gateway-variant"] == "candidate"


async def test_admin_needs_the_token(traffic_url, gateway_url):
    async with aiohttp.ClientSession() as session:
        status, body = await admin(session, traffic_url, "GET", "/admin/routing", headers={})
        assert status == 401 and "Bearer" in body["error"]
        status, _ = await admin(
            session, traffic_url, "GET", "/admin/routing", headers={"Authorization": "Bearer wrong"}
        )
        assert status == 401
        status, _ = await admin(
            session,
            traffic_url,
            "GET",
            "/admin/routing",
            headers={"Authorization": f"Basic {TOKEN}"},
        )
        assert status == 401
        status, routing = await admin(session, traffic_url, "GET", "/admin/routing")
        assert status == 200 and routing["endpoints"]["cancer"]["variants"][0]["name"] == "stable"
        status, body = await admin(session, gateway_url, "GET", "/admin/routing")  # no token set
        assert status == 403 and "GATEWAY_ADMIN_TOKEN" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        (
            "PUT",
            "/admin/endpoints/nope/weights",
            {"weights": {"stable": 1}},
            400,
            "unknown endpoint",
        ),
        (
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"ghost": 1}},
            400,
            "no variant 'ghost'",
        ),
        (
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"stable": 0, "candidate": 0}},
            400,
            "add up",
        ),
        (
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"stable": 500}},
            400,
            "between 0 and 100",
        ),
        ("PUT", "/admin/endpoints/cancer/weights", {"weights": {"stable": "x"}}, 400, "weights"),
        pytest.param(  # a JSON integer past any float: it was a 500
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"stable": 10**400}},
            400,
            "weights",
            id="huge-weight",
        ),
        (
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"slow-shadow": 5}},
            400,
            "is a shadow",
        ),
        (
            "POST",
            "/admin/endpoints/cancer/variants",
            {"name": "x", "model": "ghost:v7"},
            400,
            "not in the model store",
        ),
        (
            "POST",
            "/admin/endpoints/cancer/variants",
            {"name": "x", "model": "cancer:v1"},
            400,
            "distinct model version",
        ),
        (
            "POST",
            "/admin/endpoints/cancer/variants",
            {"name": "bad name", "model": "cancer:v9"},
            400,
            "name",
        ),
        (
            "POST",
            "/admin/endpoints/cancer/variants",
            {"name": "x", "model": "cancer:v9", "color": 1},
            400,
            "unknown key",
        ),
        ("DELETE", "/admin/endpoints/cancer/variants/ghost", None, 400, "no variant 'ghost'"),
        ("GET", "/admin/audit?limit=abc", None, 400, "limit"),
        ("GET", "/admin/audit?limit=%C2%B2", None, 400, "limit"),
        ("GET", "/admin/audit?limit=-1", None, 400, "limit"),
        ("GET", "/admin/rollouts/cancer?history=%C2%B2", None, 400, "history"),
        ("GET", "/admin/rollouts/..%2Fsummary", None, 404, "no route"),
        ("POST", "/admin/rollouts/cancer/explode", None, 404, "unknown rollout action"),
        ("PUT", "/admin/endpoints/cancer/weights", {"weights": {"../x": 1}}, 400, "variant"),
        ("PUT", "/admin/endpoints/..%2Fx/weights", {"weights": {"stable": 1}}, 404, "no route"),
        ("GET", "/admin/nothing", None, 404, "no route"),
    ],
)
async def test_admin_refuses_bad_changes_clearly(traffic_url, method, path, body, status, words):
    async with aiohttp.ClientSession() as session:
        got, answer = await admin(session, traffic_url, method, path, body)
        assert got == status and words in answer["error"], answer
        status = (await predict(session, traffic_url, "after-bad-admin")).status
        assert status == 200


async def test_a_variant_whose_model_takes_other_inputs_is_refused(traffic_url, regressor_v9):
    """The regressor takes ten features where the cancer models take thirty: as a candidate its
    share of callers would get 400s they cannot fix, as a shadow every copy would fail."""
    async with aiohttp.ClientSession() as session:
        _, before = await admin(session, traffic_url, "GET", "/admin/routing")
        for role in ({"weight": 10}, {"role": "shadow", "mirror": 1}):
            body = {"name": "regressor", "model": regressor_v9, **role}
            status, answer = await admin(
                session, traffic_url, "POST", "/admin/endpoints/cancer/variants", body
            )
            assert status == 400, answer
            assert "cannot serve beside variant 'stable' (cancer:v1)" in answer["error"]
            assert "it is a regression model" in answer["error"]
        _, after = await admin(session, traffic_url, "GET", "/admin/routing")
        _, audit = await admin(session, traffic_url, "GET", "/admin/audit?limit=50")
        assert (await predict(session, traffic_url, "after-refused-variant")).status == 200
    assert after == before
    assert not any(e["detail"].get("model") == regressor_v9 for e in audit["entries"])


@pytest.mark.alone
async def test_weight_change_reaches_every_worker_within_a_second(traffic_url, traffic_config):
    keys = [f"user-{i}" for i in range(300)]
    new = expected_variants(traffic_config, keys, {"stable": 50, "candidate": 50})
    async with aiohttp.ClientSession() as session:
        status, routing = await admin(
            session,
            traffic_url,
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"stable": 50, "candidate": 50}},
        )
        changed_at = time.monotonic()
        assert status == 200
        version = routing["version"]
        while await metric_sum(session, traffic_url, "gateway_routing_state_version") < version:
            assert time.monotonic() - changed_at < 1.0, "a worker did not follow within 1 s"
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - changed_at
        weight = await metric_sum(
            session, traffic_url, 'gateway_variant_weight{endpoint="cancer",variant="candidate"}'
        )
        _, audit = await admin(session, traffic_url, "GET", "/admin/audit?limit=50")
    assert any(
        e["action"] == "set_weights" and e["detail"]["weights"] == {"stable": 50, "candidate": 50}
        for e in audit["entries"]
    )
    pairs = await answers_from_both_workers(traffic_url, keys * 2)
    assert len({answer.worker for _, answer in pairs}) == 2, "both workers answered"
    wrong = [(key, answer) for key, answer in pairs if answer[:2] != (200, new[key])]
    assert not wrong, wrong[:5]
    assert weight == 50
    print(f"weight change on every worker after {elapsed * 1000:.0f} ms")


async def test_add_and_remove_a_variant_then_audit(traffic_url):
    async with aiohttp.ClientSession() as session:
        status, routing = await admin(
            session,
            traffic_url,
            "POST",
            "/admin/endpoints/cancer/variants",
            {"name": "extra", "model": "cancer:v5"},
        )
        assert status == 201
        names = [v["name"] for v in routing["endpoints"]["cancer"]["variants"]]
        assert "extra" in names and routing["endpoints"]["cancer"]["variants"][-1]["weight"] == 0
        pin = {"x-gateway-variant": "extra"}
        refused = await predict(session, traffic_url, "u", headers=pin)
        assert refused.status == 403  # at weight 0 it is dark: callers cannot pin it
        pinned = await predict(session, traffic_url, "u", headers={**pin, **ADMIN})
        assert pinned[:2] == (200, "extra")
        weights = {"weights": {"extra": 10}}
        status, _ = await admin(
            session, traffic_url, "PUT", "/admin/endpoints/cancer/weights", weights
        )
        assert status == 200
        weight = 'gateway_variant_weight{endpoint="cancer",variant="extra"}'
        assert await metric_sum(session, traffic_url, weight) == 10
        status, routing = await admin(
            session, traffic_url, "DELETE", "/admin/endpoints/cancer/variants/extra"
        )
        assert status == 200
        # every worker follows within a second; the removed variant's weight leaves /metrics
        # (NaN under the multiprocess exposition: Prometheus stores no value)
        deadline = time.monotonic() + 3
        while (left := await metric_sum(session, traffic_url, weight)) == 10:
            assert time.monotonic() < deadline, "the removed variant's weight stayed on /metrics"
        assert math.isnan(left) or left == 0, left
        status, audit = await admin(session, traffic_url, "GET", "/admin/audit?limit=50")
    actions = [(e["action"], e["client"]) for e in audit["entries"]]
    assert ("add_variant", "127.0.0.1") in actions and ("remove_variant", "127.0.0.1") in actions


async def test_changes_survive_a_restart(traffic_url, traffic_config):
    async with aiohttp.ClientSession() as session:
        # the state declares the file as it is (a test before may have reloaded an edit of it):
        # a start on a file edited since its last reload takes the file's endpoints
        status, _ = await admin(session, traffic_url, "POST", "/admin/reload")
        assert status == 200
        status, _ = await admin(
            session,
            traffic_url,
            "PUT",
            "/admin/endpoints/cancer/weights",
            {"weights": {"stable": 70, "candidate": 30}},
        )
        assert status == 200
        before = [await predict(session, traffic_url, f"user-{i}") for i in range(50)]
    restarted_config = traffic_config.with_name("restart.yaml")
    shutil.copy(traffic_config, restarted_config)  # same content, same data dir
    with running_server(restarted_config, env={"GATEWAY_ADMIN_TOKEN": TOKEN}) as url:
        async with aiohttp.ClientSession() as session:
            status, routing = await admin(session, url, "GET", "/admin/routing")
            after = [await predict(session, url, f"user-{i}") for i in range(50)]
    weights = {v["name"]: v["weight"] for v in routing["endpoints"]["cancer"]["variants"]}
    assert weights["candidate"] == 30 and weights["stable"] == 70
    assert [b.variant for b in before] == [a.variant for a in after]


async def test_requests_are_counted_per_variant(traffic_url):
    prefix = 'gateway_requests_total{endpoint="cancer",model_version="%s",outcome="ok",protocol="plain",variant="%s"}'
    async with fresh_connections() as session:
        before = {
            v: await metric_sum(session, traffic_url, prefix % (ver, v))
            for v, ver in (("stable", "v1"), ("candidate", "v2"))
        }
        results = await asyncio.gather(
            *(predict(session, traffic_url, f"count-{i}") for i in range(200))
        )
        after = {
            v: await metric_sum(session, traffic_url, prefix % (ver, v))
            for v, ver in (("stable", "v1"), ("candidate", "v2"))
        }
    seen = Counter(answer.variant for answer in results)
    assert {v: after[v] - before[v] for v in after} == {
        "stable": seen["stable"],
        "candidate": seen["candidate"],
    }


async def test_reload_applies_the_edited_config_and_refuses_a_broken_one(
    traffic_url, traffic_config
):
    import yaml

    original = traffic_config.read_text()
    edited = yaml.safe_load(original)
    edited["endpoints"]["cancer"]["variants"][1]["weight"] = 40
    edited["endpoints"]["cancer"]["variants"][0]["weight"] = 60
    edited["limits"] = {"max_rows": 7}
    edited["access"] = {"metrics": "anonymous"}  # a security setting: it must not look applied
    edited["endpoints"]["cancer"]["rollout"] = {"candidate": "candidate", "steps": [{"weight": 50}]}
    try:
        traffic_config.write_text(yaml.safe_dump(edited))
        async with aiohttp.ClientSession() as session:
            status, answer = await admin(session, traffic_url, "POST", "/admin/reload")
            assert status == 200, answer
            weights = {v["name"]: v["weight"] for v in answer["endpoints"]["cancer"]["variants"]}
            assert weights["candidate"] == 40
            assert answer["restart_required"] == ["limits", "access", "endpoints.cancer.rollout"]
            async with session.get(f"{traffic_url}/metrics") as response:
                assert response.status == 401  # as the running config says, until a restart
            traffic_config.write_text("endpoints: {cancer: {variants: []}}")
            status, answer = await admin(session, traffic_url, "POST", "/admin/reload")
            assert status == 400 and "variants" in answer["error"]
            status, routing = await admin(session, traffic_url, "GET", "/admin/routing")
            assert {
                v["name"]: v["weight"] for v in routing["endpoints"]["cancer"]["variants"]
            } == weights
    finally:
        traffic_config.write_text(original)


async def test_the_routing_read_through_either_worker_is_the_one_just_set(traffic_url):
    """Each call on a connection of its own, so each reaches either worker: one that had not
    yet polled the store answered the routing as it was before the change just made."""
    async with fresh_connections() as session:
        for weight in (60, 40) * 25:
            body = {"weights": {"stable": weight}}
            status, changed = await admin(
                session, traffic_url, "PUT", "/admin/endpoints/baseline/weights", body
            )
            assert status == 200, changed
            status, read = await admin(session, traffic_url, "GET", "/admin/routing")
            assert status == 200 and read["version"] == changed["version"]
