"""Rollouts end to end: a real gateway and a real monitor (the one writer that decides).

A canary on a broken model is rolled back fast and users on stable see no errors; a healthy one is
promoted step by step; operators read the audit and steer by hand; killing the monitor mid-rollout
resumes the same step with the same history."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import aiohttp.web
import pytest

from service.launch import MONITOR_SERVICE, running_server
from tests.helpers import drive, loopback_receiver, rollout_config

pytestmark = pytest.mark.integration
TOKEN = "rollout-test-token"
NEW_USERS = 1_000_000
"""Users to draw from where a rollout must pass its comparisons: each user counts once per step,
so the few hundred of ``drive``'s default are too few to show a candidate no worse."""
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def rollout_state(session, url) -> dict:
    async with session.get(f"{url}/admin/rollouts/cancer?history=1000", headers=ADMIN) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def test_a_broken_canary_is_rolled_back_and_stable_users_see_no_errors(demo_models, tmp_path):
    events: list[dict] = []

    async def take(request):
        events.append(await request.json())
        return aiohttp.web.json_response({})

    hook, cleanup = await loopback_receiver("/hook", take)
    config, port = rollout_config(tmp_path, faults={"error_rate": 0.5}, webhook=hook)
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN}
    with (
        running_server(config, port=port, service=MONITOR_SERVICE),
        running_server(config, env=env) as url,
    ):
        async with aiohttp.ClientSession() as session:
            answers = await drive(session, url, seconds=6)
            described = await rollout_state(session, url)
    await cleanup()
    unique = list({e["id"]: e for e in events}.values())  # delivery is at least once
    kinds = [e["kind"] for e in unique]
    assert kinds[:2] == ["rollout_start", "rollout_rollback"], unique
    assert unique[1]["endpoint"] == "cancer" and "with confidence" in unique[1]["reason"]
    state, history = described["state"], described["history"]
    assert state["phase"] == "rolled_back", state
    rollback = next(e for e in history if e["action"] == "rollback")
    assert rollback["cause"] in ("error_increase", "error_rate"), rollback  # default guardrails
    (failing, *_) = [c for c in rollback["checks"] if c["outcome"] == "FAIL"]
    statistic = failing["statistic"]
    evidence = [statistic[w] for w in ("stage", "epoch") if w in statistic] or [statistic]
    assert any(
        e.get("log_e", e.get("log_e_worse", 0)) >= e.get("threshold", statistic.get("threshold"))
        for e in evidence
    ), failing
    assert rollback["policy_hash"] == described["policy_hash"]
    start = next(e for e in history if e["action"] == "start")
    assert start["checks"][0]["name"] == "offline_gate" and start["checks"][0]["outcome"] == "PASS"
    by_candidate = [a for a in answers if a[3] == "candidate"]
    assert by_candidate, "the canary got traffic before it was rolled back"
    breach_to_zero = by_candidate[-1][0] - by_candidate[0][0]
    print(f"first candidate answer to last: {breach_to_zero:.2f} s")
    assert breach_to_zero < 3.0
    stable = [a for a in answers if a[3] == "stable"]
    assert stable and all(a[2] == 200 for a in stable)
    late = [a for a in answers if a[0] > by_candidate[-1][0] + 1.0]
    assert late and all(a[3] == "stable" and a[2] == 200 for a in late)


async def test_a_healthy_canary_walks_the_steps_and_is_promoted(demo_models, tmp_path):
    config, port = rollout_config(tmp_path)
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN}
    with (
        running_server(config, port=port, service=MONITOR_SERVICE),
        running_server(config, env=env) as url,
    ):
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await drive(session, url, seconds=2, users=NEW_USERS)
                described = await rollout_state(session, url)
                if described["state"]["phase"] in ("succeeded", "rolled_back"):
                    break
            # The phase is saved before its traffic is applied (so a crash between the two
            # re-applies it), and workers follow an applied change within POLL_S: read the
            # routing once the transition is applied and a worker has had a second to follow.
            while not described["applied"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                described = await rollout_state(session, url)
            followed = time.monotonic() + 1.0
            while True:
                async with session.get(f"{url}/admin/routing", headers=ADMIN) as answer:
                    routing = (await answer.json())["endpoints"]["cancer"]
                if len(routing["variants"]) == 1 or time.monotonic() > followed:
                    break
                await asyncio.sleep(0.05)
            after = await drive(session, url, seconds=1)
    actions = [e["action"] for e in described["history"] if e["action"] != "hold"]
    assert actions == ["start", "advance", "promote", "succeed"], described["history"][-1]
    assert [v["name"] for v in routing["variants"]] == ["candidate"]  # the old stable left
    assert routing["variants"][0]["role"] == "stable"
    assert all(a[3] == "candidate" and a[2] == 200 for a in after)


async def test_operators_steer_by_hand_and_a_restart_resumes_the_same_step(demo_models, tmp_path):
    config, port = rollout_config(
        tmp_path,
        steps=[{"weight": 20, "min_duration_s": 3600}, {"weight": 50, "min_duration_s": 1}],
    )
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN}
    with running_server(config, env=env) as url:
        async with aiohttp.ClientSession() as session:
            with running_server(config, port=port, service=MONITOR_SERVICE):
                await drive(session, url, seconds=2)
                before = await rollout_state(session, url)
                async with session.post(
                    f"{url}/admin/rollouts/cancer/pause", headers=ADMIN
                ) as answer:
                    assert answer.status == 200
                async with session.post(
                    f"{url}/admin/rollouts/cancer/approve", headers=ADMIN
                ) as answer:
                    assert answer.status == 409 and "approval" in (await answer.json())["error"]
                async with session.post(
                    f"{url}/admin/rollouts/cancer/resume", headers=ADMIN
                ) as answer:
                    assert answer.status == 200
                async with session.post(
                    f"{url}/admin/rollouts/cancer/launch", headers=ADMIN
                ) as answer:
                    assert answer.status == 404
                async with session.post(f"{url}/admin/rollouts/cancer/pause") as answer:
                    assert answer.status == 401  # no token
            async with session.get(f"{url}/admin/rollouts/cancer", headers=ADMIN) as answer:
                assert answer.status == 503  # the monitor is down; the gateway says so
            answers = await drive(session, url, seconds=1)  # and keeps serving both variants
            assert all(a[2] == 200 for a in answers) and {a[3] for a in answers} == {
                "stable",
                "candidate",
            }
            with running_server(config, port=port, service=MONITOR_SERVICE):
                await asyncio.sleep(1.5)
                after = await rollout_state(session, url)
    assert before["state"]["phase"] == "progressing" and before["state"]["step"] == 0
    assert after["state"]["step"] == 0 and after["state"]["started"] >= before["state"]["started"]
    assert after["state"]["analysis_started"] == before["state"]["analysis_started"]
    old = [e["at"] for e in before["history"]]
    assert [e["at"] for e in after["history"]][: len(old)] == old  # the same history, continued
    assert len(after["history"]) > len(old) + 2
    actions = [e["action"] for e in after["history"]]
    assert actions.count("start") == 1 and "pause" in actions and "resume" in actions
