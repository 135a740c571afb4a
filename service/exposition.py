"""Reading every worker's Prometheus series back: ``/metrics`` of both processes, and the
gateway's OIP statistics.

BentoML starts its workers with ``PROMETHEUS_MULTIPROC_DIR`` set; every worker writes its series
there (service/gateway/metrics.py, service/monitor/metrics.py; service/metric_values.py writes them)
and these functions read them all, so series are summed over workers.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Generic, TypeVar

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from service import metric_values

CONTENT_TYPE = CONTENT_TYPE_LATEST
T = TypeVar("T")


def _all_workers(registry: CollectorRegistry) -> CollectorRegistry:
    """Every worker's series, or, outside a multiprocess server, ``registry``'s."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return registry
    metric_values.flush()  # this worker's own series as of now (service/metric_values.py)
    workers = CollectorRegistry()
    MultiProcessCollector(workers)
    return workers


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The Prometheus text format of every worker's series."""
    return generate_latest(_all_workers(registry))


def samples(registry: CollectorRegistry) -> list[Sample]:
    """Every worker's samples, read once (each read opens every worker's metric files: read
    per figure, the twelve figures of one ``/stats`` answer took 50 ms of the worker)."""
    return [sample for family in _all_workers(registry).collect() for sample in family.samples]


class RecentRead(Generic[T]):
    """What ``read`` returns, read (in a thread) at most ``reads_per_s`` times a second, in
    bursts of as many, and never older than the call: a call gets the first read that begins
    after it arrived, shared with every call that arrived before it began. Reading every
    worker's metric files costs milliseconds of the process, and callers asking without pause
    (anyone may call ``/v2/models/{model}/stats``, and ``/metrics`` where ``access.metrics`` is
    ``anonymous``) took nearly all of its time from predictions (BENCHMARKS.md)."""

    def __init__(self, read: Callable[[], T], reads_per_s: float = 10.0) -> None:
        self.read = read
        self.reads_per_s = reads_per_s
        self._tokens = reads_per_s
        self._refilled_at = time.monotonic()
        self._began_at = float("-inf")
        self._last: T | None = None
        self._lock = asyncio.Lock()  # one read at a time; callers wait in turn

    async def __call__(self) -> T:
        arrived = time.monotonic()
        async with self._lock:
            if self._began_at >= arrived:  # read while this call waited: current for it
                return self._last
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.reads_per_s)
                self._refill()
            self._tokens -= 1
            began = time.monotonic()
            self._last = await anyio.to_thread.run_sync(self.read)
            self._began_at = began  # only a read that succeeded serves the callers behind it
            return self._last

    def _refill(self) -> None:
        now = time.monotonic()
        earned = (now - self._refilled_at) * self.reads_per_s
        self._tokens, self._refilled_at = min(self.reads_per_s, self._tokens + earned), now


def sample_total(collected: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for sample in collected
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def drop_series(gauge: Gauge, key: tuple[str, ...]) -> None:
    """Take a series off the exposition. Under BentoML the gateway's and the monitor's metrics
    are in prometheus_client's multiprocess mode, where a series' value lives in a shared file
    that ``remove`` leaves behind (it only warns): there the series is set to NaN instead, which
    Prometheus stores as "no value" and Grafana draws as a gap."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        gauge.labels(*key).set(math.nan)
        return
    with suppress(KeyError):
        gauge.remove(*key)
