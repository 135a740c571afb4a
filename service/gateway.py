"""One gateway process: configuration, metrics, models, routing state and data plane, wired together.

The BentoML service builds one ``Gateway`` per worker process and hands it to the HTTP app. The
``account`` context manager is where every prediction request, whatever its protocol, is counted.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.codecs.plain import PredictionEncoder
from service.config import GatewayConfig
from service.dataplane import DataPlane, Route
from service.errors import BadRequest, GatewayError, Overloaded
from service.metrics import GatewayMetrics
from service.model_pool import ModelLoader, check_models
from service.recording import Recorder
from service.routing import STATE_FILE, RoutingControl, initial_state, model_tags
from service.shadow import ShadowRunner
from traffic.store import SQLiteStateStore

Tensors = dict[str, np.ndarray]
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ADMIN_TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"


def request_id_from(header: str | None) -> str:
    """The caller's ``x-request-id`` when it is usable, else a fresh one."""
    if header is None:
        return uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(header):
        raise BadRequest("x-request-id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return header


@dataclass
class RequestAccount:
    """What is known about a request as it is handled; ``route`` is set once a variant is chosen."""

    endpoint: str
    protocol: str
    request_id: str
    started: float
    route: Route | None = None


class Gateway:
    """Everything one worker process serves with."""

    def __init__(
        self,
        config_path: Path,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        dataplane: DataPlane,
        routing: RoutingControl,
        admin_token: str | None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.metrics = metrics
        self.dataplane = dataplane
        self.routing = routing
        self.admin_token = admin_token
        self.shadows = ShadowRunner(dataplane.run, metrics)
        self.recorder = Recorder(config.monitor, metrics)
        self._encoders: dict[str, PredictionEncoder] = {}

    @classmethod
    def start(cls, config_path: Path, config: GatewayConfig) -> Gateway:
        """Adopt the routing state, then load every model it uses (warm, on the resolved device)."""
        metrics = GatewayMetrics(config.server.latency_slo_ms / 1000.0)
        store = SQLiteStateStore(config.data_dir / STATE_FILE)
        state = initial_state(config, store)
        tags = model_tags(state.tables)
        loader = ModelLoader(config, check_models(config, tags), metrics)
        models = {tag: loader.load(tag) for tag in tags}
        snapshot = RoutingControl.snapshot(state, models)
        dataplane = DataPlane(config.limits, snapshot, config.faults())
        routing = RoutingControl(store, loader, dataplane, metrics)
        routing.export(snapshot)
        admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        return cls(config_path, config, metrics, dataplane, routing, admin_token)

    def answered(
        self, request_id: str, account: RequestAccount, tensors: Tensors, outputs: Tensors
    ) -> None:
        """After a successful inference: record for the monitor, after the shadows if any ran.

        A mirrored request is recorded once its shadows have answered, with their predictions in
        the same record; the caller has its answer by then either way.
        """
        route, latency_s = account.route, time.perf_counter() - account.started
        if not route.shadows:
            self.recorder.record(request_id, route, tensors, outputs, latency_s)
            return

        def record(shadow: dict[str, list]) -> None:
            self.recorder.record(request_id, route, tensors, outputs, latency_s, shadow)

        self.shadows.mirror(route, tensors, outputs, record)

    def encoder(self, route: Route) -> PredictionEncoder:
        card = route.model.card
        encoder = self._encoders.get(card.tag)
        if encoder is None:
            encoder = self._encoders[card.tag] = PredictionEncoder(card)
        return encoder

    @contextmanager
    def account(self, endpoint: str, protocol: str, request_id: str) -> Iterator[RequestAccount]:
        """Count the request by outcome and time it, per endpoint and variant; a request its
        variant failed or refused is recorded for the monitor too (rollouts judge error rates)."""
        record = RequestAccount(endpoint, protocol, request_id, time.perf_counter())
        metrics = self.metrics
        in_flight = metrics.in_flight.labels(endpoint)
        in_flight.inc()
        outcome = "ok"
        try:
            yield record
        except Overloaded:
            outcome = "rejected"
            raise
        except GatewayError as error:
            outcome = "client_error" if error.status < 500 else "error"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            in_flight.dec()
            variant = record.route.variant.name if record.route else "none"
            version = record.route.variant.model_version if record.route else "none"
            metrics.request_series(endpoint, variant, version, protocol, outcome).inc()
            if outcome == "rejected":
                metrics.queue_rejections.labels(endpoint, variant).inc()
            elapsed = time.perf_counter() - record.started
            metrics.duration_series(endpoint, variant).observe(elapsed)
            if record.route is not None and outcome in ("error", "rejected"):
                self.recorder.failed(request_id, record.route, elapsed, outcome)

    async def close(self) -> None:
        for model in self.dataplane.snapshot.models.values():
            await model.batcher.close()
