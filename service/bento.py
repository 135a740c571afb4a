"""The BentoML service: the composition root ``bentoml serve service.bento:Gateway`` starts.

The configuration comes from the file named by ``GATEWAY_CONFIG`` (``gateway serve`` sets it). It is
read once at import for the worker count, which BentoML needs at class definition, and again in
each worker. A worker checks the models and the device at once (a missing model or ``device: cuda``
without a GPU fails start-up), then loads and warms the models in a thread, so ``/livez`` answers
while ``/readyz`` stays 503 until every model is ready. The hot path is the mounted Starlette app
(about twice the requests/s of an ``@bentoml.api`` route); BentoML keeps ``/livez``, ``/readyz``,
``/metrics``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import bentoml

from service.config import GatewayConfig, load_config
from service.gateway import Gateway as GatewayProcess
from service.http.app import build_app
from service.model_pool import LoadPlan, plan_models

CONFIG_ENV = "GATEWAY_CONFIG"
log = logging.getLogger("gateway")
http_app = build_app()


def _config_at_import() -> GatewayConfig | None:
    path = Path(os.environ.get(CONFIG_ENV, "gateway.yaml"))
    return load_config(path) if path.is_file() else None


_CONFIG = _config_at_import()


@bentoml.service(
    name="gateway",
    workers=_CONFIG.server.workers if _CONFIG else 1,
    logging={"access": {"enabled": _CONFIG.server.access_log if _CONFIG else False}},
    traffic={"timeout": 60},
)
@bentoml.asgi_app(http_app, path="/")
class Gateway:
    """One instance per worker process: loads the models and serves them through ``http_app``."""

    def __init__(self) -> None:
        logging.getLogger("gateway").setLevel(logging.INFO)
        if _CONFIG is None:
            raise RuntimeError(f"no gateway config: set {CONFIG_ENV} to a gateway.yaml")
        plan = plan_models(_CONFIG)
        self._loaded = threading.Event()
        threading.Thread(target=self._load, args=(_CONFIG, plan), daemon=True).start()

    def _load(self, config: GatewayConfig, plan: LoadPlan) -> None:
        try:
            http_app.state.gateway = GatewayProcess.start(config, plan)
        except Exception:
            log.exception("loading the models failed; this worker exits")
            os._exit(3)
        self._loaded.set()

    def __is_ready__(self) -> bool:
        """/readyz: ready once every configured model is loaded and warm."""
        return self._loaded.is_set()

    @bentoml.on_shutdown
    async def close(self) -> None:
        if self._loaded.is_set():
            await http_app.state.gateway.close()
