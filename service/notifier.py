"""Webhook notifications: a JSON POST per event to every configured URL, with retries and a
timeout, never in the way of the caller.

``notify`` may be called from any thread (the rollout and drift code runs in worker threads); the
deliveries run as tasks on the monitor's event loop. Each event is delivered to each URL at most
``1 + retries`` times (backoff 0.5 s, 1 s, 2 s, ...): at least once, so every event carries an
``id`` a receiver can drop repeats by (a delivery that timed out may still have arrived); outcomes are counted
(``gateway_webhook_deliveries_total``) and failures logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aiohttp

from service.config import NotificationsConfig
from service.monitor_metrics import MonitorMetrics

log = logging.getLogger("gateway.notify")


class Notifier:
    def __init__(self, config: NotificationsConfig, metrics: MonitorMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop deliveries run on (the monitor's, once it serves)."""
        self._loop = loop

    def notify(self, kind: str, event: dict) -> None:
        """Send ``event`` (plus its kind and time) to every webhook; returns at once."""
        if not self.config.webhooks or self._loop is None:
            return
        body = {"id": uuid.uuid4().hex, "kind": kind, "at": time.time(), **event}
        self._loop.call_soon_threadsafe(self._start, body)

    def _start(self, body: dict) -> None:
        for url in self.config.webhooks:
            task = asyncio.ensure_future(self._deliver(url, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: dict) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        for attempt in range(self.config.retries + 1):
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.post(url, json=body) as answer:
                        if answer.status < 300:
                            self.metrics.webhooks.labels("delivered").inc()
                            return
                        problem = f"answered {answer.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                problem = f"unreachable ({error!r})"
            if attempt < self.config.retries:
                self.metrics.webhooks.labels("retried").inc()
                await asyncio.sleep(0.5 * 2**attempt)
        self.metrics.webhooks.labels("failed").inc()
        log.warning("webhook %s %s; %s event not delivered", url, problem, body["kind"])


class DriftAlarm:
    """Fires a ``drift`` event when a variant's drifted feature share crosses ``drift_share``
    upwards (once per crossing, not on every run), so a retraining pipeline can subscribe."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._above: set[tuple[str, str]] = set()

    def observe(
        self, endpoint: str, variant: str, model: str, drifted: list[str], share: float
    ) -> None:
        key = (endpoint, variant)
        if share < self.notifier.config.drift_share:
            self._above.discard(key)
            return
        if key not in self._above:
            self._above.add(key)
            self.notifier.notify(
                "drift",
                {
                    "endpoint": endpoint,
                    "variant": variant,
                    "model": model,
                    "drifted_share": share,
                    "drifted_features": drifted,
                },
            )
