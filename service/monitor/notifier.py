"""Webhook notifications: each event is written to a durable outbox, then delivered as a signed JSON
POST to every configured URL, with retries and a timeout, never in the way of the caller.

Rollout events are written in the same transaction as the rollout state that produced them
(service/monitor/rollouts.py), so a transition decided just before a crash is still announced after the
restart, under the same event ``id`` (receivers drop repeats by it: delivery is at least once).
A delivery is signed with HMAC-SHA256 over ``<timestamp>.<body>`` with ``GATEWAY_WEBHOOK_SECRET``,
sent as ``X-Gateway-Signature: t=<timestamp>,v1=<hex digest>`` (docs/operations.md shows how to
verify it). Redirects are not followed; a 2xx is delivered; a 3xx or a 4xx (but 408 and 429) is
refused for good and not retried; a 5xx, 408, 429, a timeout or a refused connection is tried again
with backoff (0.5 s, 1 s, 2 s, ...) up to ``retries`` times. Outcomes are counted
(``gateway_webhook_deliveries_total``) and failures logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable

import aiohttp
import anyio

from service.config import NotificationsConfig
from service.monitor.metrics import MonitorMetrics
from traffic.store import OutboxEvent, StateStore

log = logging.getLogger("gateway.notify")
SIGNATURE_HEADER = "X-Gateway-Signature"
EVENT_HEADER = "X-Gateway-Event-Id"
POLL_S = 0.5
"""How often the outbox is looked at when nothing woke the deliverer."""
CONCURRENCY = 8
"""Deliveries in flight at once, so a slow receiver cannot hold up the others."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class Notifier:
    """Builds events, keeps them in the outbox, and delivers what is due."""

    def __init__(
        self,
        config: NotificationsConfig,
        metrics: MonitorMetrics,
        outbox: StateStore,
        secret: str | None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.outbox = outbox
        self.secret = secret
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: set[tuple[str, str]] = set()
        if config.webhooks and secret is None:
            log.warning(
                "webhooks are configured but GATEWAY_WEBHOOK_SECRET is not set: deliveries go "
                "unsigned, and receivers cannot tell them from forgeries"
            )

    def events(self, kind: str, event: dict, endpoint: str = "") -> list[OutboxEvent]:
        """One outbox entry per webhook for an event of ``kind`` (its id shared by all)."""
        event_id = uuid.uuid4().hex
        body = json.dumps({"id": event_id, "kind": kind, "at": time.time(), **event})
        return [OutboxEvent(event_id, url, body, endpoint) for url in self.config.webhooks]

    def wake(self) -> None:
        """Have the deliverer look at the outbox now (from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def deliver_forever(self, active: Callable[[], bool] = lambda: True) -> None:
        """Deliver due events until cancelled (a supervised task on the monitor's loop), while
        ``active()`` (this monitor leads: one deliverer for the shared outbox)."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        slots = asyncio.Semaphore(CONCURRENCY)
        tasks: set[asyncio.Task] = set()
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                due = []
                if active():
                    due = await anyio.to_thread.run_sync(self.outbox.due_events, time.time())
                for event in due:
                    if (event.id, event.url) in self._in_flight:
                        continue
                    self._in_flight.add((event.id, event.url))
                    await slots.acquire()
                    task = asyncio.create_task(self._deliver(session, event, slots))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()

    async def _deliver(
        self, session: aiohttp.ClientSession, event: OutboxEvent, slots: asyncio.Semaphore
    ) -> None:
        try:
            status, outcome = await self._attempt(session, event)
            retry_at = 0.0
            if status == "pending":
                if event.attempts >= self.config.retries:
                    status = "failed"
                else:
                    retry_at = time.time() + 0.5 * 2**event.attempts
                    self.metrics.webhooks.labels("retried").inc()
            if status != "pending":
                self.metrics.webhooks.labels(status).inc()
            if status == "failed":
                log.warning("webhook %s: %s; event %s not delivered", event.url, outcome, event.id)
            await anyio.to_thread.run_sync(
                self.outbox.event_attempted, event, status, outcome, retry_at
            )
        finally:
            self._in_flight.discard((event.id, event.url))
            slots.release()

    async def _attempt(self, session: aiohttp.ClientSession, event: OutboxEvent) -> tuple[str, str]:
        """One POST: (pending | delivered | failed, what happened)."""
        body = event.body.encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: event.id}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, int(time.time()), body)
        try:
            async with session.post(
                event.url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                status = answer.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return "pending", f"unreachable ({type(error).__name__})"
        if status < 300:
            return "delivered", f"answered {status}"
        if 300 <= status < 400:
            return "failed", f"answered {status}: redirects are not followed"
        if status < 500 and status not in (408, 429):
            return "failed", f"answered {status}: refused, not retried"
        return "pending", f"answered {status}"


class DriftAlarm:
    """Fires a ``drift`` event when a variant's drifted feature share crosses ``drift_share``
    upwards (once per crossing, not on every run), so a retraining pipeline can subscribe. The
    crossing is kept in the shared state store with its event: a monitor that restarts, or a
    standby that takes over, does not announce a drift again that was announced already (it
    did, to every receiver, each time a monitor started)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def observe(
        self, endpoint: str, variant: str, model: str, drifted: list[str], share: float
    ) -> None:
        store = self.notifier.outbox
        if share < self.notifier.config.drift_share:
            store.clear_drift_alarm(endpoint, variant)
            return
        event = {
            "endpoint": endpoint,
            "variant": variant,
            "model": model,
            "drifted_share": share,
            "drifted_features": drifted,
        }
        events = self.notifier.events("drift", event)
        if store.raise_drift_alarm(endpoint, variant, model, events):
            self.notifier.wake()
