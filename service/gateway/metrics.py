"""The gateway's Prometheus metrics (prometheus_client, multiprocess-safe under BentoML workers).

BentoML starts its workers with ``PROMETHEUS_MULTIPROC_DIR`` set; every worker writes its series
there and ``/metrics`` (service/exposition.py) reads them all, so series are
summed over workers. Gauges name their multiprocess mode. Label values are bounded: endpoint,
variant, model and version come from the config, outcome from a fixed set.

BentoML's own HTTP metrics are switched off (service/gateway/bento.py): they label each series
with the raw request path, so every mistyped or probing URL would add series for good.
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from service.exposition import RecentRead, exposition, samples
from service.gateway.admission import OVERLOAD
from service.gateway.arriving import ARRIVING_BODIES

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROTOCOLS = ("plain", "oip")
OUTCOMES = ("ok", "client_error", "rejected", "error")
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SHED_SERIES = (
    ("predict", OVERLOAD),
    ("infer", OVERLOAD),
    ("grpc_infer", OVERLOAD),
    ("feedback", "in_flight"),
    ("shadow", OVERLOAD),
    ("predict", ARRIVING_BODIES),
    ("infer", ARRIVING_BODIES),
    ("other", ARRIVING_BODIES),
    ("grpc_infer", ARRIVING_BODIES),
    ("grpc_other", ARRIVING_BODIES),
)


def latency_buckets(slo_seconds: float) -> tuple[float, ...]:
    """The standard latency buckets plus one exactly on the SLO, so SLO ratios need no guessing."""
    return tuple(sorted({*LATENCY_BUCKETS, slo_seconds}))


class GatewayMetrics:
    """All series the gateway writes; one instance per process."""

    def __init__(self, latency_slo_seconds: float, registry: CollectorRegistry = REGISTRY) -> None:
        """``registry``: where the series live (the process's default; a fresh one lets several
        gateways be built in one process, as the in-process tests do)."""
        self.registry = registry
        self.recent_samples = RecentRead(functools.partial(samples, registry))
        """Every worker's samples, for the OIP ``/stats``."""
        self.recent_exposition = RecentRead(functools.partial(exposition, registry))
        """Every worker's series in Prometheus's text format, for ``/metrics``."""
        self.requests = Counter(
            "gateway_requests_total",
            "Prediction requests answered, by endpoint, variant, model version and outcome.",
            ["endpoint", "variant", "model_version", "protocol", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from the request's body read to its answer ready, per endpoint and variant.",
            ["endpoint", "variant"],
            buckets=latency_buckets(latency_slo_seconds),
            registry=registry,
        )
        self.inference_duration = Histogram(
            "gateway_inference_duration_seconds",
            "Time one onnxruntime run (one batch) took.",
            ["model", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "gateway_inference_batch_rows",
            "Rows per onnxruntime run: how well concurrent requests are coalesced.",
            ["model", "model_version"],
            buckets=BATCH_ROW_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Prediction requests being handled now.",
            ["endpoint"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queue_rejections = Counter(
            "gateway_queue_rejections_total",
            "Requests refused with 429 because the model's queue was full.",
            ["endpoint", "variant"],
            registry=registry,
        )
        self.model_loaded = Gauge(
            "gateway_model_loaded",
            "1 when a model version is loaded, with the execution provider actually in use.",
            ["model", "model_version", "provider"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.variant_weight = Gauge(
            "gateway_variant_weight",
            "Current traffic weight (percent) of each variant; for shadows, the mirrored percent.",
            ["endpoint", "variant"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.routing_version = Gauge(
            "gateway_routing_state_version",
            "Routing-state version installed; min over live workers (a lagging worker shows here).",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.admin_changes = Counter(
            "gateway_admin_changes_total",
            "Changes asked of the admin API, by action and outcome (applied, unchanged or refused).",
            ["action", "outcome"],
            registry=registry,
        )
        self.shadow_requests = Counter(
            "gateway_shadow_requests_total",
            "Requests mirrored to a shadow variant, by outcome (ok, error, rejected).",
            ["endpoint", "variant", "outcome"],
            registry=registry,
        )
        self.shadow_rows = Counter(
            "gateway_shadow_rows_total",
            "Rows answered by both primary and shadow, by whether their predictions agree.",
            ["endpoint", "variant", "agreement"],
            registry=registry,
        )
        self.monitor_dropped = Counter(
            "gateway_monitor_dropped_records_total",
            "Prediction records dropped because the buffer towards the monitor was full.",
            registry=registry,
        )
        self.monitor_shipped = Counter(
            "gateway_monitor_shipped_records_total",
            "Prediction records delivered to the monitor.",
            registry=registry,
        )
        self.monitor_buffered = Gauge(
            "gateway_monitor_buffered_records",
            "Prediction records waiting for the monitor.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.monitor_last_delivery = Gauge(
            "gateway_monitor_last_delivery_timestamp_seconds",
            "When a batch of records last reached the monitor (unix time).",
            multiprocess_mode="max",
            registry=registry,
        )
        self.queue_time = Histogram(
            "gateway_queue_time_seconds",
            "Time a request waited in its model's queue before its run began.",
            ["model", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shed = Counter(
            "gateway_shed_requests_total",
            "Work refused or skipped under overload, by route (predict, infer, grpc_infer, "
            "grpc_other, feedback, shadow, other) and reason (overload: the admission limit; "
            "in_flight: the route's own budget; arriving_bodies: the bytes of bodies and gRPC "
            "messages still arriving in the worker).",
            ["route", "reason"],
            registry=registry,
        )
        for route, reason in SHED_SERIES:
            self.shed.labels(route, reason)  # at 0 from the start: rates and alerts need it
        self.admission_limit = Gauge(
            "gateway_admission_limit",
            "Predictions admitted at once, summed over workers (the adaptive limit).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.explain_requests = Counter(
            "gateway_explain_requests_total",
            "Explanation calls (/explain) by endpoint and outcome (ok, client_error, rejected, error).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.background_restarts = Counter(
            "gateway_background_restarts_total",
            "Background tasks (batching, record shipping, routing follower) started again "
            "after they died.",
            ["task"],
            registry=registry,
        )
        self._children: dict[tuple, Counter | Gauge | Histogram] = {}

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str):
        """``metric``'s series for ``labels``, cached: ``labels()`` is costly on the hot path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_series(
        self, endpoint: str, variant: str, version: str, protocol: str, outcome: str
    ):
        """The request counter of one label set."""
        return self._child(self.requests, endpoint, variant, version, protocol, outcome)

    def duration_series(self, endpoint: str, variant: str):
        """The latency histogram of an endpoint and variant."""
        return self._child(self.request_duration, endpoint, variant)

    def in_flight_series(self, endpoint: str):
        """The in-flight gauge of an endpoint."""
        return self._child(self.in_flight, endpoint)

    def shed_series(self, route: str, reason: str):
        """The counter of work shed on ``route`` for ``reason`` (one of ``SHED_SERIES``)."""
        return self._child(self.shed, route, reason)

    def prepare_variant(self, endpoint: str, variant: str, version: str) -> None:
        """Create a variant's request and rejection series at 0 before its first request, so an
        error ratio or rejection rate is 0 rather than missing (dashboards and alerts need it)."""
        for protocol in PROTOCOLS:
            for outcome in OUTCOMES:
                self.request_series(endpoint, variant, version, protocol, outcome)
        self.queue_rejections.labels(endpoint, variant)

    def task_restarted(self, task: str) -> None:
        """Count a supervised background task started again (service/supervise.py)."""
        self.background_restarts.labels(task).inc()

    def batch_observer(self, model: str, version: str):
        """A callback for ``Batcher`` that records each batch's rows, run time and queue waits."""
        rows = self.batch_rows.labels(model, version)
        duration = self.inference_duration.labels(model, version)
        queue_time = self.queue_time.labels(model, version)

        def observe(batch_rows: int, seconds: float, waits: list[float]) -> None:
            rows.observe(batch_rows)
            duration.observe(seconds)
            for wait in waits:
                queue_time.observe(wait)

        return observe
