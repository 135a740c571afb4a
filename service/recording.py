"""The gateway's side of monitoring: record every answer, ship records to the monitor in batches.

``record`` appends to a bounded ``RecordBuffer`` and returns at once (no metric write on the hot
path unless a record is dropped; the buffer's size is exported once per shipping round); ``ship_forever`` (a background
task in each worker) posts batches to the monitor's ``/records``. If the monitor is slow or down,
batches go back into the buffer and shipping backs off; once the buffer is full, new records are
dropped and counted (``gateway_monitor_dropped_records_total``). Nothing here ever delays an answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp
import numpy as np

from monitors.records import PredictionRecord, RecordBuffer, encode_batch
from service.codecs.plain import row_predictions
from service.config import MonitorConfig
from service.dataplane import Route
from service.errors import GatewayError
from service.metrics import GatewayMetrics

log = logging.getLogger("gateway.recording")


class MonitorUnavailable(GatewayError):
    """The monitor cannot be reached now: nothing was stored or fetched; the caller should retry."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(
            f"{message}; nothing was stored or fetched, retry later", headers={"Retry-After": "5"}
        )


MAX_BACKOFF_S = 5.0


class Recorder:
    """Buffers this worker's prediction records and delivers them to the monitor."""

    def __init__(self, config: MonitorConfig, metrics: GatewayMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.buffer = RecordBuffer(config.buffer_records)

    @property
    def enabled(self) -> bool:
        return self.config.url is not None

    async def send_labels(self, labels: list[dict]) -> list[dict]:
        """Hand labels to the monitor, which stores them durably before it answers.

        Raises ``MonitorUnavailable`` when the monitor cannot be reached or fails.
        """
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(
                    f"{self.config.url}/labels", json={"labels": labels}
                ) as answer:
                    if answer.status != 200:
                        raise MonitorUnavailable(f"the monitor answered {answer.status}")
                    return (await answer.json())["results"]
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise MonitorUnavailable(f"the monitor is unreachable ({error})") from None

    def record(
        self,
        request_id: str,
        route: Route,
        tensors: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        latency_s: float,
        shadow: dict[str, list] | None = None,
    ) -> None:
        """Keep one answered request for the monitor (inputs sampled at ``sample_inputs``)."""
        if not self.enabled:
            return
        card = route.model.card
        keep_inputs = random.random() < self.config.sample_inputs
        self._keep(
            request_id,
            route,
            latency_s,
            row_predictions(card, outputs),
            inputs=tensors[card.feature_input.name] if keep_inputs else None,
            shadow=shadow or {},
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
            **fields,
        )
        if not self.buffer.append(record):
            self.metrics.monitor_dropped.inc()

    async def forward(self, method: str, path: str) -> tuple[int, str, bytes]:
        """``method`` ``path`` on the monitor: (status, content type, body). Reports and the
        rollout admin calls pass through here, so operators need only the gateway's address."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s * 5)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.request(method, f"{self.config.url}{path}") as answer:
                    content_type = answer.headers.get("Content-Type", "application/octet-stream")
                    return answer.status, content_type, await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise MonitorUnavailable(f"the monitor is unreachable ({error})") from None

    async def ship_forever(self) -> None:
        """Deliver batches until cancelled; back off while the monitor does not take them."""
        url = f"{self.config.url}/records"
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        backoff = self.config.flush_interval_ms / 1000
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(backoff)
                delivered = await self._ship(session, url)
                self.metrics.monitor_buffered.set(len(self.buffer))
                base = self.config.flush_interval_ms / 1000
                backoff = base if delivered else min(backoff * 2, MAX_BACKOFF_S)

    def _refused(self, batch: list[PredictionRecord], reason: str) -> None:
        """The monitor refused a batch as invalid: sending it again would fail forever."""
        self.metrics.monitor_dropped.inc(len(batch))
        log.error("monitor refused %d records, dropped: %s", len(batch), reason[:500])

    async def _ship(self, session: aiohttp.ClientSession, url: str) -> bool:
        while batch := self.buffer.drain(self.config.batch_records):
            try:
                headers = {"Content-Type": "application/json"}
                async with session.post(url, data=encode_batch(batch), headers=headers) as answer:
                    if 400 <= answer.status < 500 and answer.status != 429:
                        self._refused(batch, await answer.text())
                        continue
                    if answer.status != 200:
                        raise aiohttp.ClientResponseError(
                            answer.request_info, (), status=answer.status
                        )
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                dropped_before = self.buffer.dropped
                self.buffer.requeue(batch)
                self.metrics.monitor_buffered.inc(
                    len(batch) - (self.buffer.dropped - dropped_before)
                )
                self.metrics.monitor_dropped.inc(self.buffer.dropped - dropped_before)
                log.warning("monitor at %s did not take %d records: %s", url, len(batch), error)
                return False
            self.metrics.monitor_shipped.inc(len(batch))
            self.metrics.monitor_last_delivery.set(time.time())
        return True
