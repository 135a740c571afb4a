"""The monitor as a BentoML service: ``bentoml serve service.monitor.bento:MonitorService`` (one worker).

It owns the monitor store (``<data_dir>/monitor.sqlite3``) and takes records and labels from every
gateway worker and replica over HTTP (service/monitor/app.py); it runs the analysis and, being a
single process, is the one writer that decides rollouts (service/monitor/rollouts.py). Started by
``gateway monitor``; the gateway finds it at ``monitor.url``. A separate process, so the gateway
serves on while it is stopped, slow or restarting.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import bentoml

from service import bentoml_fixes
from service.config import CONFIG_ENV, load_config
from service.monitor.app import build_monitor_app
from service.monitor.process import Monitor

bentoml_fixes.apply()
monitor_app = build_monitor_app()
_CONFIG_PATH = Path(os.environ.get(CONFIG_ENV, "gateway.yaml")).resolve()
_CONFIG = load_config(_CONFIG_PATH) if _CONFIG_PATH.is_file() else None


@bentoml.service(
    name="monitor",
    workers=1,
    # where a plain `bentoml serve` listens (its --host and --port win): loopback by default
    http={"host": _CONFIG.monitor.host, "port": _CONFIG.monitor.port} if _CONFIG else {},
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
)
@bentoml.asgi_app(monitor_app, path="/")
class MonitorService:
    """Holds the store; one process, so SQLite writes never contend across workers."""

    def __init__(self) -> None:
        logging.getLogger("gateway").setLevel(logging.INFO)
        if _CONFIG is None:
            raise RuntimeError(f"no gateway config: set {CONFIG_ENV} to a gateway.yaml")
        monitor_app.state.monitor = Monitor.start(_CONFIG_PATH, _CONFIG)
