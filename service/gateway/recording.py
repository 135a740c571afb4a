"""The gateway's side of monitoring: record every answer, ship records to the monitor in batches,
and carry labels and the calls operators make through the gateway to the monitor.

``record`` appends to a ``RecordBuffer`` bounded in records and bytes and returns at once (no metric
write on the hot path unless a record is dropped); ``ship_forever`` (a supervised background task
in each worker) posts batches, bounded in bytes too, to the monitor's ``/records``. If the monitor
is slow, down or refuses this gateway's token, batches go back into the buffer and shipping backs off;
once the buffer is full, new records are dropped and counted
(``gateway_monitor_dropped_records_total``). Nothing here ever delays an answer. Every call to the
monitor carries the monitor token.

With several monitors (``monitor.urls``: a leader and standbys, any of which ingests), every call
goes to the one that answered last; one that cannot be reached or answers 5xx sends the call (and
the following ones) on to the next, so labels are not refused while a monitor is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Literal

import aiohttp
import numpy as np

from monitors.records import InputSampler, PredictionRecord, RecordBuffer, encode_batch
from service.codecs.plain import row_predictions
from service.config import MonitorConfig
from service.errors import BadRequest, Overloaded, Unavailable
from service.gateway.dataplane import Route
from service.gateway.metrics import GatewayMetrics
from service.http.auth import CLIENT_HEADER
from service.logs import Throttled

log = logging.getLogger("gateway.recording")
MAX_BACKOFF_S = 5.0


def _unavailable(message: str) -> Unavailable:
    return Unavailable(f"{message}; nothing was stored or fetched, retry later")


class Recorder:
    """Buffers this worker's prediction records and delivers them to the monitor."""

    def __init__(
        self,
        config: MonitorConfig,
        metrics: GatewayMetrics,
        token: str | None,
        shedding: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.shedding = shedding
        """True while the gateway refuses predictions: records keep coming, their inputs wait."""
        self.buffer = RecordBuffer(config.buffer_records, config.buffer_bytes)
        self.input_sampler = InputSampler(config.sample_inputs, config.input_rows_per_s)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.urls = config.monitor_urls()
        self._current = 0
        """Index in ``urls`` of the monitor calls go to first (the last one that answered)."""
        self._failures = Throttled(log)
        self._unreachable = Throttled(log, every_s=10.0)

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def _in_turn(self) -> list[int]:
        """Indexes of the monitors, the current one first."""
        return [(self._current + i) % len(self.urls) for i in range(len(self.urls))]

    def _fail_over(self, index: int) -> None:
        """The monitor at ``index`` failed: the next one goes first from now on."""
        if index == self._current:
            self._current = (index + 1) % len(self.urls)

    async def send_feedback(
        self, kind: Literal["labels", "rewards"], items: list[dict]
    ) -> list[dict]:
        """Hand labels or rewards to the monitor, which checks and stores them durably before it
        answers; each item's outcome comes back.

        The monitor's refusals come back as the same errors (400 a bad label or reward, 429 too
        many waiting for their predictions); ``Unavailable`` when it cannot be reached, fails,
        or cannot store (a full disk).
        """
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            status, _, body = await self._call(session, "POST", f"/{kind}", json={kind: items})
        if status == 200:
            return json.loads(body)["results"]
        message = _error_message(body)
        if status == 400:
            raise BadRequest(message)
        if status == 429:
            raise Overloaded(message, retry_after_s=60)
        raise _unavailable(f"the monitor answered {status}: {message}")

    async def _call(
        self, session: aiohttp.ClientSession, method: str, path: str, **options
    ) -> tuple[int, str, bytes]:
        """``method path`` on the monitors in turn, until one answers below 500: (status, content
        type, body). ``Unavailable`` when none does, or when a monitor refuses this gateway's
        token."""
        problem = "no monitor is configured"
        for index in self._in_turn():
            try:
                async with session.request(
                    method, f"{self.urls[index]}{path}", **options
                ) as answer:
                    body = await answer.read()
                    status = answer.status
                    content_type = answer.headers.get("Content-Type", "application/octet-stream")
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                # where it was and why: for the log; a caller of /feedback is told only this
                self._unreachable.warning(
                    "the monitor at %s is unreachable: %r", self.urls[index], error
                )
                problem = "the monitor is unreachable"
            else:
                if status in (401, 403):
                    log.error("the monitor refused this gateway's token: check its secret")
                    raise _unavailable("the monitor refused the gateway")
                if status < 500:
                    self._current = index
                    return status, content_type, body
                problem = f"the monitor answered {status}: {_error_message(body)}"
            self._fail_over(index)
        raise _unavailable(problem)

    def record(
        self,
        request_id: str,
        correlation_id: str | None,
        route: Route,
        tensors: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        latency_s: float,
        shadow: dict[str, list] | None = None,
    ) -> None:
        """Keep one answered request for the monitor, its inputs as ``InputSampler`` draws."""
        if not self.enabled:
            return
        card = route.model.card
        inputs = tensors[card.feature_input.name]
        variant = (route.endpoint, route.variant.name)
        keep_inputs = self.input_sampler.keep(variant, len(inputs)) and not self.shedding()
        self._keep(
            request_id,
            route,
            latency_s,
            row_predictions(card, outputs),
            inputs=inputs if keep_inputs else None,
            shadow=shadow or {},
            correlation_id=correlation_id,
        )

    def failed(self, request_id: str, route: Route, latency_s: float, outcome: str) -> None:
        """Keep a request the routed variant did not answer (an error or a rejection)."""
        if self.enabled:
            self._keep(request_id, route, latency_s, [], outcome=outcome)

    def _keep(self, request_id: str, route: Route, latency_s: float, predictions, **fields) -> None:
        """Buffer one record, or count it dropped when the buffer is full."""
        record = PredictionRecord(
            request_id=request_id,
            at=time.time(),
            endpoint=route.endpoint,
            variant=route.variant.name,
            model=route.model.card.tag,
            predictions=predictions,
            latency_s=latency_s,
            pinned=route.pinned,
            unit=route.unit,
            **fields,
        )
        if not self.buffer.append(record):
            self.metrics.monitor_dropped.inc()

    async def forward(self, method: str, path: str, client: str) -> tuple[int, str, bytes]:
        """``method`` ``path`` on the monitor: (status, content type, body). Reports and the
        rollout admin calls pass through here, so operators need only the gateway's address;
        ``path`` is built by the caller from validated names only."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s * 5)
        headers = {**self.headers, CLIENT_HEADER: client}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            return await self._call(session, method, path, allow_redirects=False)

    async def ship_forever(self) -> None:
        """Deliver batches until cancelled; back off while the monitor does not take them."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        base = self.config.flush_interval_ms / 1000
        backoff = base
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            while True:
                await asyncio.sleep(backoff)
                index = self._current
                delivered = await self._ship(session, f"{self.urls[index]}/records")
                self.metrics.monitor_buffered.set(len(self.buffer))
                if delivered:
                    backoff = base
                elif len(self.urls) > 1:
                    self._fail_over(index)  # the next monitor at once, backing off per round
                    backoff = base if self._current != 0 else min(backoff * 2, MAX_BACKOFF_S)
                else:
                    backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _refused(self, batch: list[PredictionRecord], reason: str) -> None:
        """The monitor refused a batch as invalid: sending it again would fail forever."""
        self.metrics.monitor_dropped.inc(len(batch))
        log.error("monitor refused %d records, dropped: %s", len(batch), reason[:500])

    def _undelivered(self, batch: list[PredictionRecord], url: str, problem: str) -> None:
        """Put a batch back for later; what no longer fits is dropped and counted."""
        dropped_before = self.buffer.dropped
        self.buffer.requeue(batch)
        self.metrics.monitor_dropped.inc(self.buffer.dropped - dropped_before)
        self._failures.warning(
            "monitor at %s did not take %d records: %s", url, len(batch), problem
        )

    async def _ship(self, session: aiohttp.ClientSession, url: str) -> bool:
        config = self.config
        while batch := self.buffer.drain(config.batch_records, config.batch_bytes):
            try:
                headers = {"Content-Type": "application/json"}
                async with session.post(url, data=encode_batch(batch), headers=headers) as answer:
                    status = answer.status
                    if status in (401, 403):
                        self._undelivered(batch, url, "it refused this gateway's token")
                        return False
                    if 400 <= status < 500 and status != 429:
                        self._refused(batch, await answer.text())
                        continue
                    if status != 200:
                        self._undelivered(batch, url, f"it answered {status}")
                        return False
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                self._undelivered(batch, url, str(error) or type(error).__name__)
                return False
            self._failures.recovered("monitor at %s takes records again", url)
            self.metrics.monitor_shipped.inc(len(batch))
            self.metrics.monitor_last_delivery.set(time.time())
        return True


def _error_message(body: bytes) -> str:
    """The ``error`` of a JSON error answer, or its text."""
    try:
        return str(json.loads(body)["error"])
    except Exception:  # not our JSON: the status says enough
        return body.decode(errors="replace")[:500]
