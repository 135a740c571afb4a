"""One gateway process: configuration, secrets, metrics, models, routing state and data plane,
wired together; and ``Gateway.predict``, the one call that owns a prediction request.

The HTTP handlers (plain JSON and OIP) only move headers and bodies: they hand ``predict`` a
``Call`` (the endpoint, the headers, and how to read and decode the body) and encode the
``Answer`` it returns. ``predict`` reads the body, routes, validates, runs, and accounts for the
request in one place whatever its outcome: metrics, and a record for the monitor of answers and
failures alike (rollouts judge error rates). Latency is measured from the moment the body is read,
so a slow upload never makes a variant look slow.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry

from service.config import GatewayConfig
from service.errors import BadRequest, GatewayError, Overloaded
from service.explanations import Explanation
from service.gateway.admission import Admission
from service.gateway.arriving import ArrivingBodies
from service.gateway.dataplane import DataPlane, Route
from service.gateway.explain import Explainer, targets_for
from service.gateway.metrics import GatewayMetrics
from service.gateway.models import ModelLoader, check_models
from service.gateway.recording import Recorder
from service.gateway.routing import RoutingControl
from service.gateway.shadow import ShadowRunner
from service.model_card import ModelCard
from service.names import RequestIds
from service.retries import with_retries
from service.secrets import Secrets, load_secrets, presents
from service.state import initial_state, model_tags, open_state_store
from service.tensors import Tensors
from storage.postgres import PostgresDatabase
from traffic.table import EndpointTable

REQUEST_ID_HEADER = "x-gateway-request-id"
"""The gateway's own id of an answer (its record's key; labels name it)."""
CORRELATION_HEADER = "x-request-id"
"""The caller's correlation id, echoed back and kept in the record (not a key: callers reuse it)."""
PIN_HEADER = "x-gateway-variant"
CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_KEY_LENGTH = 256
WORKER = str(os.getpid())
"""Which worker answered (``x-gateway-worker``), for support."""


def correlation_id_from(header: str | None) -> str | None:
    """The caller's ``x-request-id``, when it is usable (400 otherwise)."""
    if header is not None and not CORRELATION_ID.fullmatch(header):
        raise BadRequest("x-request-id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return header


class Decoded(Protocol):
    """A decoded request body, whatever its protocol."""

    @property
    def fields(self) -> Mapping[str, object]:
        """Values a routing key may be taken from (a JSON field, an OIP request parameter)."""
        ...

    def tensors(self, card: ModelCard) -> Tensors:
        """The input tensors for the routed model (400 when they cannot be)."""
        ...


class Call(msgspec.Struct, frozen=True):
    """One prediction call as a transport hands it over."""

    endpoint: str
    protocol: str
    headers: Mapping[str, str]
    read: Callable[[EndpointTable], Awaitable[Decoded]]
    """Reads and decodes the body (the table says which body field, if any, is the key)."""
    pin_version: str | None = None
    """The model version a protocol's path pins (OIP ``/versions/{v}``)."""


class Answer(msgspec.Struct, frozen=True):
    """What a prediction returns to its transport: who answered what, and the ids to echo."""

    request_id: str
    correlation_id: str | None
    route: Route
    outputs: Tensors
    decoded: Decoded
    """The request as its transport decoded it (what the encoder needs to answer in kind)."""

    def headers(self) -> dict[str, str]:
        """Headers every prediction answer carries, whatever its protocol."""
        card = self.route.model.card
        return {
            REQUEST_ID_HEADER: self.request_id,
            CORRELATION_HEADER: self.correlation_id or self.request_id,
            "x-gateway-variant": self.route.variant.name,
            "x-gateway-model-version": card.version,
            "x-gateway-worker": WORKER,
        }


def routing_key(
    headers: Mapping[str, str], table: EndpointTable, fields: Mapping[str, object]
) -> str | None:
    """The request's routing key: from the configured header, or the configured body field."""
    policy = table.policy
    if policy.key_header:
        key = headers.get(policy.key_header)
    elif policy.key_field:
        key = fields.get(policy.key_field)
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
            raise BadRequest(f"routing key {policy.key_field!r} must be a string or an integer")
        key = None if key is None else str(key)
    else:
        return None
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"the routing key must be 1-{MAX_KEY_LENGTH} characters")
    return key


class Gateway:
    """Everything one worker process serves with."""

    def __init__(
        self,
        config_path: Path,
        config: GatewayConfig,
        secrets_: Secrets,
        metrics: GatewayMetrics,
        dataplane: DataPlane,
        routing: RoutingControl,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.secrets = secrets_
        self.metrics = metrics
        self.dataplane = dataplane
        self.routing = routing
        self.request_ids = RequestIds(secrets_.monitor_token)
        """Signed with the monitor's secret, so that the monitor holds a label for its record
        only when a gateway gave its id to an answer it records (service/names.py)."""
        admission = config.admission
        self.admission = Admission(
            (admission.queue_budget_ms or config.server.latency_slo_ms / 6) / 1000,
            admission.min_concurrency,
            admission.max_concurrency,
            admission.max_refusals_per_s,
            admission.max_hold_ms / 1000,
            on_limit=metrics.admission_limit.set,
        )
        """Predictions admitted under overload (service/gateway/admission.py); shadows and sampled
        inputs wait while it refuses (optional work is shed before answers)."""
        self.arriving_bodies = ArrivingBodies()
        """Request bodies and gRPC messages still arriving, over both transports
        (service/gateway/arriving.py)."""
        self.feedback_in_flight = 0
        shedding = lambda: self.admission.shedding  # noqa: E731 - read at call time
        self.shadows = ShadowRunner(dataplane.run, metrics, shedding)
        self.recorder = Recorder(config.monitor, metrics, secrets_.monitor_token, shedding)
        self.explainer = Explainer(config.explain)

    @classmethod
    def start(
        cls, config_path: Path, config: GatewayConfig, registry: CollectorRegistry = REGISTRY
    ) -> Gateway:
        """Adopt the routing state, then load every model it uses (warm, on the resolved device).
        ``registry``: where its metrics live (see ``GatewayMetrics``)."""
        secrets_ = load_secrets(config.secrets)
        metrics = GatewayMetrics(config.server.latency_slo_ms / 1000.0, registry)
        store = with_retries("opening the routing state", lambda: open_state_store(config))
        state = with_retries("reading the routing state", lambda: initial_state(config, store))
        tags = model_tags(state.tables)
        loader = ModelLoader(config, check_models(config, tags), metrics)
        models = {tag: loader.load(tag) for tag in tags}
        snapshot = RoutingControl.snapshot(state, models)
        dataplane = DataPlane(config.limits, snapshot, config.faults())
        dsn = store.db.dsn if isinstance(store.db, PostgresDatabase) else None
        routing = RoutingControl(store, loader, dataplane, metrics, notifications_dsn=dsn)
        routing.export(snapshot)
        return cls(config_path, config, secrets_, metrics, dataplane, routing)

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """Whether the headers carry the admin token."""
        return presents(headers, self.secrets.admin_token)

    async def predict(self, call: Call) -> Answer:
        """Read, route, validate and run one request, and account for it whatever happens."""
        table = self.dataplane.table(call.endpoint)
        request_id = self.request_ids.new(table.endpoint)
        correlation_id = correlation_id_from(call.headers.get(CORRELATION_HEADER))
        in_flight = self.metrics.in_flight_series(table.endpoint)
        in_flight.inc()
        started = time.perf_counter()
        route: Route | None = None
        outcome = "error"
        try:
            decoded = await call.read(table)
            started = time.perf_counter()  # latency counts from the moment the body is read
            route = self._route(call, table, decoded)
            tensors = decoded.tensors(route.model.card)
            outputs = await self.dataplane.infer(route, tensors)
            outcome = "ok"
        except GatewayError as error:
            outcome = _outcome(error)
            if not _recorded(route, outcome):
                request_id = self.request_ids.unrecorded(request_id)
            _add_ids(error, request_id, correlation_id)
            raise
        finally:
            in_flight.dec()
            latency_s = time.perf_counter() - started
            self._account(call, request_id, route, outcome, latency_s)
        answer = Answer(request_id, correlation_id, route, outputs, decoded)
        self._record(answer, tensors, latency_s)
        return answer

    async def explain(self, call: Call, target: str | None) -> tuple[Answer, list[Explanation]]:
        """Route, validate and run a request as ``predict`` does (the same key gets the same
        variant), then explain each row's answer (service/gateway/explain.py). Explanations are
        not traffic: counted apart (``gateway_explain_requests_total``), never recorded."""
        table = self.dataplane.table(call.endpoint)
        request_id = self.request_ids.unrecorded(self.request_ids.new(table.endpoint))
        correlation_id = correlation_id_from(call.headers.get(CORRELATION_HEADER))
        outcome = "error"
        try:
            self.explainer.admit()
            decoded = await call.read(table)
            route = self._route(call, table, decoded)
            card = route.model.card
            tensors = decoded.tensors(card)
            self.explainer.check(card, tensors)
            outputs = await self.dataplane.infer(route, tensors)
            targets = targets_for(card, outputs, target)
            explanations = await self.explainer.explain(card, tensors, targets)
            outcome = "ok"
        except GatewayError as error:
            outcome = _outcome(error)
            _add_ids(error, request_id, correlation_id)
            raise
        finally:
            self.metrics.explain_requests.labels(table.endpoint, outcome).inc()
        return Answer(request_id, correlation_id, route, outputs, decoded), explanations

    def _route(self, call: Call, table: EndpointTable, decoded: Decoded) -> Route:
        """Where the request goes: its key, or a pin (dark variants only with the admin token)."""
        pin_variant = call.headers.get(PIN_HEADER)
        pinned = pin_variant is not None or call.pin_version is not None
        return self.dataplane.route(
            table.endpoint,
            routing_key(call.headers, table, decoded.fields),
            pin_variant=pin_variant,
            pin_version=call.pin_version,
            privileged=pinned and self.is_admin(call.headers),
        )

    def _account(
        self, call: Call, request_id: str, route: Route | None, outcome: str, latency_s: float
    ) -> None:
        """Count the request by outcome and time it; keep a failed one for the monitor too."""
        metrics, endpoint = self.metrics, call.endpoint
        variant = route.variant.name if route else "none"
        version = route.variant.model_version if route else "none"
        metrics.request_series(endpoint, variant, version, call.protocol, outcome).inc()
        metrics.duration_series(endpoint, variant).observe(latency_s)
        if outcome == "rejected":
            metrics.queue_rejections.labels(endpoint, variant).inc()
        if outcome != "ok" and _recorded(route, outcome):
            self.recorder.failed(request_id, route, latency_s, outcome)

    def _record(self, answer: Answer, tensors: Tensors, latency_s: float) -> None:
        """Keep an answer for the monitor; a mirrored request once its shadows have answered, so
        their predictions travel in the same record (the caller has its answer by then)."""
        route = answer.route
        if not route.shadows:
            self.recorder.record(
                answer.request_id, answer.correlation_id, route, tensors, answer.outputs, latency_s
            )
            return

        def record_with(shadow: dict[str, list]) -> None:
            self.recorder.record(
                answer.request_id,
                answer.correlation_id,
                route,
                tensors,
                answer.outputs,
                latency_s,
                shadow,
            )

        self.shadows.mirror(route, tensors, answer.outputs, record_with)

    async def close(self) -> None:
        self.explainer.close()
        for model in self.dataplane.snapshot.models.values():
            await model.batcher.close()


def _outcome(error: GatewayError) -> str:
    """A failed request's outcome label: refused, the caller's fault, or ours."""
    if isinstance(error, Overloaded):
        return "rejected"
    return "client_error" if error.status < 500 else "error"


def _recorded(route: Route | None, outcome: str) -> bool:
    """Whether the monitor gets a record of a request: every answer, and the failures that count
    against a variant (its error rate), not refusals of the caller's input."""
    return outcome == "ok" or (route is not None and outcome in ("error", "rejected"))


def _add_ids(error: GatewayError, request_id: str, correlation_id: str | None) -> None:
    """Let the error answer carry the request's ids in its headers, as an answer would."""
    error.headers = {
        **error.headers,
        REQUEST_ID_HEADER: request_id,
        CORRELATION_HEADER: correlation_id or request_id,
    }
