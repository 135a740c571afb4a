"""Reading every worker's Prometheus series back: ``/metrics`` of both processes, and the
gateway's OIP statistics.

BentoML starts its workers with ``PROMETHEUS_MULTIPROC_DIR`` set; every worker writes its series
there (service/gateway/metrics.py, service/monitor/metrics.py; service/metric_values.py writes them)
and these functions read them all, so series are summed over workers.
"""

from __future__ import annotations

import math
import os
from contextlib import suppress

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service import metric_values

CONTENT_TYPE = CONTENT_TYPE_LATEST


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


def sample_totals(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum, over every worker, of the samples called ``name`` whose labels include
    ``labels``."""
    total = 0.0
    for family in _all_workers(registry).collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


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
