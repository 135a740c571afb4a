"""One gateway process: its configuration, metrics, loaded models and data plane, wired together.

The BentoML service builds one ``Gateway`` per worker process and hands it to the HTTP app. The
``account`` context manager is where every prediction request, whatever its protocol, is counted.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.codecs.plain import PredictionEncoder
from service.config import GatewayConfig
from service.dataplane import DataPlane, Route
from service.errors import BadRequest, GatewayError, Overloaded
from service.metrics import GatewayMetrics
from service.model_pool import LoadedModel, LoadPlan, load_models

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
    route: Route | None = None


class Gateway:
    """Everything one worker process serves with."""

    def __init__(
        self, config: GatewayConfig, models: dict[str, LoadedModel], metrics: GatewayMetrics
    ):
        self.config = config
        self.metrics = metrics
        self.models = models
        self.dataplane = DataPlane(config, models)
        self.encoders = {tag: PredictionEncoder(m.card) for tag, m in models.items()}

    @classmethod
    def start(cls, config: GatewayConfig, plan: LoadPlan) -> Gateway:
        """Load every planned model (warm, on the resolved device)."""
        metrics = GatewayMetrics(config.server.latency_slo_ms / 1000.0)
        return cls(config, load_models(config, plan, metrics), metrics)

    def encoder(self, route: Route) -> PredictionEncoder:
        return self.encoders[route.model.card.tag]

    @contextmanager
    def account(self, endpoint: str, protocol: str) -> Iterator[RequestAccount]:
        """Count the request by outcome and time it, per endpoint and variant."""
        record = RequestAccount(endpoint, protocol)
        metrics = self.metrics
        in_flight = metrics.in_flight.labels(endpoint)
        in_flight.inc()
        started = time.perf_counter()
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
            metrics.duration_series(endpoint, variant).observe(time.perf_counter() - started)

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.close()
