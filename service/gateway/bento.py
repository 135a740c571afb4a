"""The gateway's BentoML service: what ``bentoml serve service.gateway.bento:GatewayService``
starts, and where a worker's parts are built.

The configuration comes from the file named by ``GATEWAY_CONFIG`` (``gateway serve`` sets it). It is
read once at import for the worker count, which BentoML needs at class definition, and again in
each worker. A worker loads and warms every model before it starts accepting connections: the
workers share one listening socket, so a request never reaches a worker that is still loading, and
``/readyz`` (BentoML's) answers only once a worker with every model loaded is serving. A missing
model or ``device: cuda`` without a GPU fails start-up. The hot path is the mounted Starlette app
(about twice the requests/s of an ``@bentoml.api`` route); BentoML keeps ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import bentoml

from service import bentoml_fixes, metric_values, open_files
from service.config import CONFIG_ENV, GatewayConfig, LimitsConfig, load_config
from service.gateway.arriving import ArrivingBodies
from service.gateway.http.app import build_app
from service.gateway.http.gate import PredictionGate
from service.gateway.process import WORKER, Gateway
from service.http import large_heads, pipelining, slow_clients

bentoml_fixes.apply()
metric_values.install()
open_files.raise_limit()
log = logging.getLogger("gateway")
http_app = build_app()


_CONFIG_PATH = Path(os.environ.get(CONFIG_ENV, "gateway.yaml")).resolve()
_CONFIG = load_config(_CONFIG_PATH) if _CONFIG_PATH.is_file() else None
slow_clients.apply(_CONFIG.server.request_read_timeout_s if _CONFIG else 0)
large_heads.apply()
pipelining.apply()


def _check_model_store(config: GatewayConfig) -> None:
    """BentoML fixed its model store at import: refuse a config that names another one."""
    wanted = config.model_store
    current = os.environ.get("BENTOML_HOME")
    if wanted is not None and (current is None or Path(current).resolve() != wanted.resolve()):
        raise RuntimeError(
            f"the config's model_store is {wanted} but BentoML uses {current or '~/bentoml'}: "
            f"start with `gateway serve` or set BENTOML_HOME={wanted}"
        )


@bentoml.service(
    name="gateway",
    workers=_CONFIG.server.workers if _CONFIG else 1,
    # where a plain `bentoml serve` listens (its --host and --port win): loopback by default
    http={"host": _CONFIG.server.host, "port": _CONFIG.server.port} if _CONFIG else {},
    logging={"access": {"enabled": _CONFIG.server.access_log if _CONFIG else False}},
    traffic={"timeout": 60},
    # The gateway serves its own /metrics (bounded labels; see service/gateway/metrics.py), and
    # the hot path is not traced: both BentoML middlewares cost ~15% of a worker's CPU on 1-row requests.
    metrics={"enabled": False},
    tracing={"excluded_urls": ["/predict/", "/v2/"]},
)
@bentoml.asgi_app(http_app, path="/")
class GatewayService:
    """One instance per worker process: loads the models and serves them through ``http_app``."""

    def __init__(self) -> None:
        logging.getLogger("gateway").setLevel(logging.INFO)
        if _CONFIG is None:
            raise RuntimeError(f"no gateway config: set {CONFIG_ENV} to a gateway.yaml")
        _check_model_store(_CONFIG)
        self.process = Gateway.start(_CONFIG_PATH, _CONFIG)
        http_app.state.gateway = self.process
        # Everything loaded so far lives as long as the worker: keep it out of the collector's way,
        # or each full collection walks BentoML's large heap and stalls the event loop.
        gc.freeze()

    @bentoml.on_shutdown
    async def close(self) -> None:
        await self.process.close()


def _gate(bentoml_app):
    """BentoML's app for this service, behind the prediction gate (service/gateway/http/gate.py)."""
    started: Gateway | None = None

    def gateway() -> Gateway | None:
        """This worker's gateway once it has started, looked up in the app's state only until
        then: Starlette's ``State`` lookup costs half a microsecond, on every request."""
        nonlocal started
        if started is None:
            started = getattr(http_app.state, "gateway", None)
        return started

    def admission():
        current = gateway()
        return None if current is None else current.admission

    def refused(route: str, reason: str) -> None:
        gateway().metrics.shed_series(route, reason).inc()

    def limits() -> LimitsConfig:
        return gateway().config.limits

    def arriving_bodies() -> ArrivingBodies:
        return gateway().arriving_bodies

    return PredictionGate(
        bentoml_app, http_app, admission, refused, WORKER, limits, arriving_bodies
    )


def _install_gate(service) -> None:
    """Put the gate in front of ``service``'s ASGI app. BentoML's ``Service`` is a slotted attrs
    class, so the hook is its class's ``to_asgi``, wrapping only this service's app."""
    build = type(service).to_asgi

    def to_asgi(self, is_main: bool = True):
        app = build(self, is_main)
        return _gate(app) if self is service else app

    type(service).to_asgi = to_asgi


_install_gate(GatewayService)
