"""Webhooks from the durable outbox: signed, retried while the receiver fails or is away, given up
on a refusal (4xx) or a redirect (never followed), delivered once per event and URL; drift fires
once per crossing, whichever monitor sees it. Real HTTP receivers on loopback, a real SQLite
outbox (and PostgreSQL's for drift); metrics are mocks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from unittest.mock import MagicMock

from aiohttp import web

from service.config import NotificationsConfig
from service.monitor.notifier import SIGNATURE_HEADER, DriftAlarm, Notifier, sign
from tests.helpers import loopback_receiver
from traffic.store import SQLStateStore

SECRET = "webhook-secret-of-the-tests"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (the snippet in docs/operations.md)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields["v1"])


async def receiver(answer):
    """A receiver whose handler is ``answer(request, seen)``; returns (url, seen, cleanup)."""
    seen: list[web.Request] = []

    async def take(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(request)
        return await answer(request, seen)

    url, cleanup = await loopback_receiver("/hook", take)
    return url, seen, cleanup


async def deliver(tmp_path, url: str, seconds: float, **settings) -> Notifier:
    """Announce one event to ``url`` and run the deliverer for ``seconds``."""
    config = NotificationsConfig(webhooks=[url], **{"timeout_s": 1, "retries": 2, **settings})
    notifier = Notifier(
        config, MagicMock(), SQLStateStore.open_sqlite(tmp_path / "state.sqlite3"), SECRET
    )
    DriftAlarm(notifier).observe("cancer", "stable", "cancer:v1", ["mean_radius"], 1.0)
    task = asyncio.create_task(notifier.deliver_forever())
    await asyncio.sleep(seconds)
    task.cancel()
    return notifier


def outcomes(notifier: Notifier) -> list[str]:
    return [c.args[0] for c in notifier.metrics.webhooks.labels.call_args_list]


async def test_a_failing_webhook_is_retried_then_delivered_signed(tmp_path):
    async def fail_first(request, seen):
        return web.json_response({}, status=500 if len(seen) == 1 else 200)

    url, seen, cleanup = await receiver(fail_first)
    notifier = await deliver(tmp_path, url, 1.5)
    await cleanup()
    assert outcomes(notifier) == ["retried", "delivered"]
    bodies = [await r.read() for r in seen]
    assert [json.loads(b)["kind"] for b in bodies] == ["drift"] * 2
    assert len({json.loads(b)["id"] for b in bodies}) == 1  # the same event, by id
    assert all(verify(SECRET, r.headers[SIGNATURE_HEADER], b) for r, b in zip(seen, bodies))
    assert not verify("another-secret-altogether", seen[0].headers[SIGNATURE_HEADER], bodies[0])
    assert not verify(SECRET, seen[0].headers[SIGNATURE_HEADER], bodies[0] + b" ")
    (event,) = notifier.outbox.events()
    assert event["status"] == "delivered" and event["attempts"] == 2


async def test_a_receiver_that_is_down_or_slow_is_retried_then_given_up(tmp_path):
    async def slow(request, seen):
        await asyncio.sleep(2)
        return web.json_response({})

    url, seen, cleanup = await receiver(slow)
    notifier = await deliver(tmp_path / "slow", url, 3.0, timeout_s=0.3, retries=1)
    assert outcomes(notifier) == ["retried", "failed"] and len(seen) == 2
    await cleanup()
    down = await deliver(tmp_path, url, 1.5, retries=1)  # nothing listens there any more
    assert outcomes(down) == ["retried", "failed"]
    assert down.outbox.events()[0]["status"] == "failed"


async def test_redirects_are_not_followed_and_refusals_not_retried(tmp_path):
    async def elsewhere(request, seen):
        return web.Response(status=404)

    target, followed, cleanup_target = await receiver(elsewhere)

    async def redirect(request, seen):
        return web.Response(status=307, headers={"Location": target})

    url, seen, cleanup = await receiver(redirect)
    redirected = await deliver(tmp_path / "redirect", url, 1.5)
    assert outcomes(redirected) == ["failed"] and len(seen) == 1 and followed == []
    assert "redirects are not followed" in redirected.outbox.events()[0]["outcome"]
    refused = await deliver(tmp_path, target, 1.5)
    assert outcomes(refused) == ["failed"] and len(followed) == 1
    await cleanup()
    await cleanup_target()


def test_the_signature_covers_the_time_and_the_body():
    header = sign(SECRET, 1700000000, b'{"a": 1}')
    assert header.startswith("t=1700000000,v1=") and verify(SECRET, header, b'{"a": 1}')
    assert not verify(SECRET, header.replace("t=1700000000", "t=1700000001"), b'{"a": 1}')


def test_drift_fires_once_per_crossing_whichever_monitor_sees_it(open_database):
    """A drift event per crossing of ``drift_share`` upwards, with the crossing kept in the
    shared state store (on each engine): a monitor that restarts or a standby that takes over
    (each a new alarm on its own connection) does not announce a drift already announced. Each
    start announced it again. A new model in the variant drifts on its own account."""
    store = SQLStateStore(open_database())
    config = NotificationsConfig(webhooks=["http://127.0.0.1:9/hook"], drift_share=0.3)

    def alarm() -> DriftAlarm:
        """A monitor's alarm, as each monitor process makes one."""
        return DriftAlarm(Notifier(config, MagicMock(), SQLStateStore(open_database()), SECRET))

    def fired() -> list[float]:
        bodies = [json.loads(event["body"]) for event in reversed(store.events())]
        return [body["drifted_share"] for body in bodies if body["kind"] == "drift"]

    first = alarm()
    for share in (0.1, 0.4, 0.5):
        first.observe("cancer", "stable", "cancer:v1", ["mean_radius"], share)
    assert fired() == [0.4]
    alarm().observe("cancer", "stable", "cancer:v1", ["mean_radius"], 0.45)  # restarted
    assert fired() == [0.4]
    alarm().observe("cancer", "candidate", "cancer:v2", ["mean_radius"], 0.6)  # its own
    assert fired() == [0.4, 0.6]
    for share in (0.2, 0.35):
        alarm().observe("cancer", "stable", "cancer:v1", ["mean_radius"], share)
    assert fired() == [0.4, 0.6, 0.35]
    alarm().observe("cancer", "candidate", "cancer:v3", ["mean_radius"], 0.5)  # a new model
    assert fired() == [0.4, 0.6, 0.35, 0.5]
