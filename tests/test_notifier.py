"""Webhooks: retried until delivered, given up after the retries; drift fires once per crossing.
A real HTTP receiver on loopback; metrics are mocks (unit test)."""

from __future__ import annotations

import asyncio
from unittest.mock import MagicMock

from aiohttp import web

from service.config import NotificationsConfig
from service.notifier import DriftAlarm, Notifier
from tests.conftest import loopback_receiver


async def receiver(statuses: list[int]):
    seen: list[dict] = []

    async def take(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({}, status=statuses[min(len(seen), len(statuses)) - 1])

    url, cleanup = await loopback_receiver("/hook", take)
    return url, seen, cleanup


async def test_a_failing_webhook_is_retried_then_delivered_or_given_up():
    url, seen, cleanup = await receiver([500, 200])
    config = NotificationsConfig(webhooks=[url], retries=2, timeout_s=1)
    notifier = Notifier(config, MagicMock())
    notifier.bind(asyncio.get_running_loop())
    notifier.notify("rollout_rollback", {"endpoint": "cancer"})
    await asyncio.sleep(1.0)
    assert [e["kind"] for e in seen] == ["rollout_rollback"] * 2
    outcomes = [c.args[0] for c in notifier.metrics.webhooks.labels.call_args_list]
    assert outcomes == ["retried", "delivered"]
    await cleanup()
    gone = Notifier(NotificationsConfig(webhooks=[url], retries=1, timeout_s=0.5), MagicMock())
    gone.bind(asyncio.get_running_loop())
    gone.notify("drift", {})
    await asyncio.sleep(1.5)
    assert [c.args[0] for c in gone.metrics.webhooks.labels.call_args_list] == ["retried", "failed"]


def test_drift_fires_once_per_crossing():
    notifier = MagicMock()
    notifier.config = NotificationsConfig(drift_share=0.3)
    alarm = DriftAlarm(notifier)
    for share in (0.1, 0.4, 0.5, 0.2, 0.35):
        alarm.observe("cancer", "stable", "cancer:v1", ["mean_radius"], share)
    fired = [c.args[1]["drifted_share"] for c in notifier.notify.call_args_list]
    assert fired == [0.4, 0.35]
