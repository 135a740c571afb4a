"""A/B experiments end to end: a real gateway (two workers) and a real monitor. Keyed traffic with
a reward that truly favours one arm is read out with exact totals, the right lift and a ship
verdict; bad rewards are refused whole; weights moved mid-experiment are recorded, warned about
and make the readout no_ship (the sample-ratio test flags a move this big too); start and stop
open and close the window."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import aiohttp
import pytest

from service import registry
from service.launch import MONITOR_SERVICE, free_port, running_server
from tests.helpers import (
    ADMIN_AUTH,
    ADMIN_ENV,
    METRICS_AUTH,
    MONITOR_AUTH,
    ROW,
    local_monitor,
    metric_sum,
    write_config,
)

pytestmark = pytest.mark.integration
RATES = {"stable": 0.2, "candidate": 0.45}
"""The synthetic conversion rate per request of each arm: the candidate truly wins."""
VARIANTS = [
    {"name": "stable", "model": "cancer:v1", "weight": 50},
    {"name": "candidate", "model": "cancer:v2", "weight": 50, "role": "candidate"},
]
EXPERIMENT = {
    "arms": ["stable", "candidate"],
    "rewards": {
        "converted": {"kind": "binary"},
        "revenue": {"kind": "continuous", "missing": None},
    },
    "primary": "converted",
    "guardrails": [{"metric": "error_rate", "margin": 0.05, "relative": False}],
    "min_units": 50,
    "planned_units": 1000,
}


@pytest.fixture(scope="module")
def servers(demo_models, tmp_path_factory):
    """(gateway URL, monitor URL): two gateway workers, one monitor, analysis every second."""
    directory = tmp_path_factory.mktemp("experiments")
    v1 = demo_models["cancer:v1"]
    registry.add_model(v1.onnx_path, "cancer", v1.reference_path, version="v8")  # a third variant
    port = free_port()
    key = {"key": {"header": "x-user-id"}}
    config = write_config(
        directory / "gateway.yaml",
        server={"workers": 2},
        data_dir=str(directory / "data"),
        monitor=local_monitor(port, interval_s=1, report_interval_s=1),
        endpoints={
            "cancer": {"routing": key, "variants": VARIANTS, "experiment": EXPERIMENT},
            "quick": {
                "routing": key,
                "variants": VARIANTS,
                "experiment": {**EXPERIMENT, "join_window_s": 1},
            },
            "fresh": {"routing": key, "variants": VARIANTS, "experiment": EXPERIMENT},
            "diabetes": {"variants": [{"name": "stable", "model": "diabetes:v1"}]},
        },
    )
    with (
        running_server(config, port=port, service=MONITOR_SERVICE, log_path=directory / "m.log"),
        running_server(config, env=ADMIN_ENV, log_path=directory / "g.log") as url,
    ):
        yield url, f"http://127.0.0.1:{port}"


async def act(session, url, endpoint, action) -> tuple[int, dict]:
    async with session.post(
        f"{url}/admin/experiments/{endpoint}/{action}", headers=ADMIN_AUTH
    ) as answer:
        return answer.status, await answer.json()


async def readout(session, url, endpoint="cancer") -> dict:
    """A readout computed after this call began, or a stopped experiment's: a read answers the
    newest one at once, which may predate what the test just sent (a newer one is computed
    every monitor interval), and a stopped one's is final once its join window closed."""
    asked_at, deadline = time.time(), time.monotonic() + 20
    while True:
        async with session.get(f"{url}/admin/experiments/{endpoint}", headers=ADMIN_AUTH) as a:
            assert a.status == 200, await a.text()
            result = await a.json()
        if result.get("computed_at", asked_at) >= asked_at or result["status"] == "stopped":
            return result
        assert time.monotonic() < deadline, "no readout was computed after the data was sent"
        await asyncio.sleep(0.1)


async def send_feedback(session, url, body) -> tuple[int, dict]:
    async with session.post(f"{url}/feedback", json=body) as answer:
        return answer.status, await answer.json()


async def keyed_traffic(session, url, users, requests_each, endpoint="cancer") -> list[tuple]:
    """Each user's requests, 16 at a time: (user, variant, request id) per answer."""
    answers, queue = [], [(f"user-{u}", i) for u in users for i in range(requests_each)]
    random.Random(1).shuffle(queue)

    async def worker() -> None:
        while queue:
            user, _ = queue.pop()
            async with session.post(
                f"{url}/predict/{endpoint}", json={"instances": [ROW]}, headers={"x-user-id": user}
            ) as answer:
                assert answer.status == 200, await answer.text()
                body = await answer.json()
                answers.append((user, body["variant"], body["request_id"]))

    await asyncio.gather(*(worker() for _ in range(16)))
    return answers


async def every_worker_on(session, url, version, timeout_s=5.0) -> None:
    """Wait until every gateway worker has installed routing ``version`` (the metric is the
    minimum over workers)."""
    deadline = time.monotonic() + timeout_s
    while await metric_sum(session, url, "gateway_routing_state_version") < version:
        assert time.monotonic() < deadline, f"a worker did not install version {version}"
        await asyncio.sleep(0.05)


async def wait_for_records(session, monitor_url, endpoint, count, timeout_s=15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with session.get(f"{monitor_url}/summary", headers=MONITOR_AUTH) as answer:
            variants = (await answer.json())["variants"]
        got = sum(v["records"] for v in variants if v["endpoint"] == endpoint)
        if got >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"the monitor had {got} of {count} records of {endpoint} after {timeout_s} s"
    )


async def test_a_reward_that_favours_one_arm_is_read_out_exactly_and_ships(servers):
    url, monitor_url = servers
    rng = random.Random(7)
    async with aiohttp.ClientSession() as session:
        assert (await readout(session, url))["status"] == "not_started"
        status, started = await act(session, url, "cancer", "start")
        assert status == 200 and started["status"] == "running", started
        assert started["weights"] == {"stable": 50.0, "candidate": 50.0}
        answers = await keyed_traffic(session, url, range(400), 3)
        rewards, sums = [], defaultdict(float)
        for _, variant, request_id in answers:
            converted = int(rng.random() < RATES[variant])
            sums[variant] += converted
            rewards.append({"request_id": request_id, "metric": "converted", "value": converted})
            if converted:
                rewards.append({"request_id": request_id, "metric": "revenue", "value": 20.0})
        # half of them sent before their records reach the monitor, in two calls per worker
        for start in range(0, len(rewards), 300):
            status, body = await send_feedback(
                session, url, {"rewards": rewards[start : start + 300]}
            )
            assert status == 200, body
            assert {r["outcome"] for r in body["results"]} == {"stored"}
        status, body = await send_feedback(session, url, {"rewards": rewards[:50]})  # again
        assert status == 200 and {r["outcome"] for r in body["results"]} == {"duplicate"}
        await wait_for_records(session, monitor_url, "cancer", len(answers))
        result = await readout(session, url)

    users_by_arm, requests_by_arm = defaultdict(set), defaultdict(int)
    for user, variant, _ in answers:
        users_by_arm[variant].add(user)
        requests_by_arm[variant] += 1
    assert all(len({v for u, v, _ in answers if u == user}) == 1 for user in users_by_arm["stable"])
    assert result["sample_ratio"]["units"] == {arm: len(users_by_arm[arm]) for arm in RATES}
    converted = result["metrics"]["converted"]
    for arm in RATES:  # exact totals through two workers and the monitor
        assert converted[arm]["mean"] == pytest.approx(sums[arm] / requests_by_arm[arm], abs=1e-12)
        assert converted[arm]["values"] == requests_by_arm[arm]
    assert result["metrics"]["revenue"]["candidate"]["mean"] == pytest.approx(20.0)
    (arm,) = result["arms"]
    primary = arm["metrics"][0]
    assert primary["metric"] == "converted" and primary["outcome"] == "better"
    lower, upper = primary["lift"]["always_valid_interval"]
    assert 0 < lower < RATES["candidate"] - RATES["stable"] < upper
    assert primary["lift"]["fixed_interval"][0] > lower
    assert result["verdict"] == "ship" and result["winner"] == "candidate", result["reason"]
    assert not result["sample_ratio"]["flagged"]
    assert arm["power"]["minimum_detectable_effect"] > 0
    # the leader's readouts save it with the reports and export it for Grafana
    ship = 'gateway_experiment_verdict{endpoint="cancer",verdict="ship"} 1.0'
    wanted = {("cancer", "stable", "json"), ("cancer", "stable", "html")}
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{url}/reports", headers=ADMIN_AUTH) as answer:
                reports = (await answer.json())["reports"]
            saved = {
                (r["endpoint"], r["variant"], r["format"])
                for r in reports
                if r["kind"] == "experiment"
            }
            async with session.get(f"{monitor_url}/metrics", headers=METRICS_AUTH) as answer:
                exposition = await answer.text()
            if wanted <= saved and ship in exposition:
                break
            assert time.monotonic() < deadline, (saved, ship)
            await asyncio.sleep(0.2)
    assert 'gateway_experiment_lift_ratio{arm="candidate",bound="lower"' in exposition


async def test_bad_rewards_are_refused_whole_and_the_gateway_serves_on(servers):
    url, _ = servers
    async with aiohttp.ClientSession() as session:
        (_, _, good), (_, _, other) = await keyed_traffic(session, url, ["bad-1", "bad-2"], 1)
        async with session.post(f"{url}/predict/diabetes", json={"instances": [ROW[:10]]}) as a:
            no_experiment = (await a.json())["request_id"]
        cases = [
            ({"request_id": good, "metric": "clicks", "value": 1}, "not a reward"),
            ({"request_id": good, "metric": "converted", "value": 2}, "binary"),
            ({"request_id": good, "metric": "converted", "value": True}, "finite number"),
            ({"request_id": good, "metric": "converted", "value": "1"}, "finite number"),
            ({"request_id": good, "metric": "revenue", "value": [1.0, 2.0]}, "row"),
            ({"request_id": good, "metric": "revenue", "value": []}, "finite number"),
            ({"request_id": good, "metric": "revenue", "value": 1e160}, "at most 1e+15"),
            ({"request_id": no_experiment, "metric": "converted", "value": 1}, "no experiment"),
            ({"request_id": "not-an-id", "metric": "converted", "value": 1}, "request_id"),
            ({"request_id": good, "metric": "converted"}, "must be"),
        ]
        await asyncio.sleep(0.5)  # the records are at the monitor: rows are checked there
        for bad, words in cases:
            fine = {"request_id": other, "metric": "converted", "value": 1}
            status, body = await send_feedback(session, url, {"rewards": [fine, bad]})
            assert status == 400 and words in body["error"], (bad, body)
        status, body = await send_feedback(session, url, {"rewards": [], "lables": []})
        assert status == 400 and "lables" in body["error"]
        # nothing of a refused call was stored: the good reward is new now, then conflicts
        fine = {"request_id": other, "metric": "converted", "value": 1}
        status, body = await send_feedback(session, url, {"rewards": [fine]})
        assert status == 200 and body["results"][0]["outcome"] == "stored"
        status, body = await send_feedback(session, url, {"rewards": [{**fine, "value": 0}]})
        assert status == 409 and other in body["error"]
        # a reward past the join window (1 s on "quick") is refused, the rest stored
        ((_, _, early),) = await keyed_traffic(session, url, ["late-1"], 1, "quick")
        await asyncio.sleep(2.5)
        ((_, _, fresh),) = await keyed_traffic(session, url, ["late-2"], 1, "quick")
        await asyncio.sleep(0.3)
        late = [
            {"request_id": early, "metric": "converted", "value": 1},
            {"request_id": fresh, "metric": "converted", "value": 1},
        ]
        status, body = await send_feedback(session, url, {"rewards": late})
        assert status == 422 and "join window" in body["error"] and early in body["error"]
        status, body = await send_feedback(session, url, {"rewards": late[1:]})
        assert status == 200 and body["results"][0]["outcome"] == "duplicate"
        # labels and rewards travel together
        status, body = await send_feedback(
            session,
            url,
            {
                "labels": [{"request_id": good, "label": "benign"}],
                "rewards": [{**fine, "request_id": good}],
            },
        )
        assert status == 200 and [r["outcome"] for r in body["results"]] == ["stored", "stored"]
        assert len(await keyed_traffic(session, url, ["after"], 2)) == 2


async def test_moved_weights_are_recorded_warned_about_and_end_in_no_ship(servers):
    url, monitor_url = servers
    async with aiohttp.ClientSession() as session:
        status, body = await act(session, url, "quick", "start")
        assert status == 200, body
        status, body = await act(session, url, "quick", "start")
        assert status == 409 and "stop it first" in body["error"]
        await keyed_traffic(session, url, range(1000, 1300), 1, "quick")
        async with session.put(
            f"{url}/admin/endpoints/quick/weights",
            json={"weights": {"stable": 90, "candidate": 10}},
            headers=ADMIN_AUTH,
        ) as answer:
            assert answer.status == 200
            changed = await answer.json()
        (warning,) = changed["warnings"]
        assert "readout is no_ship from now on" in warning
        # the other worker follows within routing's POLL_S; traffic before that would be split
        # by the old weights there
        await every_worker_on(session, url, changed["version"])
        answers = await keyed_traffic(session, url, range(2000, 2600), 1, "quick")
        await wait_for_records(session, monitor_url, "quick", 900)
        result = await readout(session, url, "quick")
        assert [c["weights"] for c in result["weight_changes"]] == [
            {"stable": 90.0, "candidate": 10.0}
        ]
        assert result["sample_ratio"]["flagged"], result["sample_ratio"]
        assert result["verdict"] == "no_ship" and "moved users between arms" in result["reason"]
        status, stopped = await act(session, url, "quick", "stop")
        assert status == 200 and stopped["status"] == "stopped"
        status, body = await act(session, url, "quick", "stop")
        assert status == 409
        after = await readout(session, url, "quick")
        assert after["status"] == "stopped"
        assert after["sample_ratio"]["units"] == result["sample_ratio"]["units"]
        assert len({v for _, v, _ in answers}) == 2
        status, body = await act(session, url, "quick", "start")  # a new, empty window
        assert status == 200 and body["weights"] == {"stable": 90.0, "candidate": 10.0}
        fresh = await readout(session, url, "quick")
        assert fresh["sample_ratio"]["units"] == {"stable": 0, "candidate": 0}
        assert fresh["verdict"] == "inconclusive"
        await act(session, url, "quick", "stop")


async def test_experiment_admin_needs_the_token_and_names_what_it_knows(servers):
    url, _ = servers
    async with aiohttp.ClientSession() as session:
        for method, path in (
            ("GET", "/admin/experiments"),
            ("GET", "/admin/experiments/cancer"),
            ("POST", "/admin/experiments/cancer/start"),
            ("POST", "/admin/experiments/cancer/stop"),
        ):
            async with session.request(method, f"{url}{path}") as answer:
                assert answer.status == 401, path
        status, body = await act(session, url, "diabetes", "start")
        assert status == 404 and "no experiment" in body["error"]
        status, body = await act(session, url, "cancer", "launch")
        assert status == 404 and "start" in body["error"]
        async with session.get(f"{url}/admin/experiments", headers=ADMIN_AUTH) as answer:
            listed = {e["endpoint"]: e for e in (await answer.json())["experiments"]}
        assert set(listed) == {"cancer", "quick", "fresh"}  # declared, diabetes has none


async def test_an_experiment_starts_with_the_weights_just_set_through_either_worker(servers):
    """Each call on a connection of its own, so each reaches either worker. A worker that had
    not yet installed the weights the other had just set started the experiment expecting the
    old ones, and its sample-ratio test then flagged a sound assignment."""
    url, _ = servers
    halves = ({"stable": 70.0, "candidate": 30.0}, {"stable": 30.0, "candidate": 70.0})
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for weights in halves * 6:
            async with session.put(
                f"{url}/admin/endpoints/fresh/weights",
                json={"weights": weights},
                headers=ADMIN_AUTH,
            ) as answer:
                assert answer.status == 200, await answer.text()
            status, started = await act(session, url, "fresh", "start")
            assert status == 200 and started["weights"] == weights, started
            status, _ = await act(session, url, "fresh", "stop")
            assert status == 200


async def test_a_variant_added_beside_the_arms_that_moves_users_between_them_ends_in_no_ship(
    servers,
):
    """A stable variant added after the arms takes buckets from both ends of the allocation:
    some of the candidate's users go to the stable arm, though neither arm's weight changed and
    no warning was given before."""
    url, _ = servers
    async with aiohttp.ClientSession() as session:
        status, started = await act(session, url, "fresh", "start")
        assert status == 200, started
        extra = {"name": "extra", "model": "cancer:v8", "role": "stable", "weight": 20}
        async with session.post(
            f"{url}/admin/endpoints/fresh/variants", json=extra, headers=ADMIN_AUTH
        ) as answer:
            assert answer.status == 201, await answer.text()
            (warning,) = (await answer.json())["warnings"]
        assert "this change moved users between its arms" in warning
        result = await readout(session, url, "fresh")
        assert result["weight_changes"][-1]["weights"] == started["weights"]
        assert result["verdict"] == "no_ship" and "moved users between arms" in result["reason"]
        async with session.delete(
            f"{url}/admin/endpoints/fresh/variants/extra", headers=ADMIN_AUTH
        ) as answer:
            assert answer.status == 200
        status, _ = await act(session, url, "fresh", "stop")
        assert status == 200
