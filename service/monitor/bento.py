"""The monitor as a BentoML service: ``bentoml serve service.monitor.bento:MonitorService`` (one worker).

It takes records, labels and rewards from every gateway worker and replica over HTTP
(service/monitor/app.py) into the monitor store (``<data_dir>/monitor.sqlite3``, or PostgreSQL),
and while it holds the leader lease runs the analysis and decides rollouts
(service/monitor/leadership.py; several monitors may share one database). Started by ``gateway
monitor``; the gateway finds it at ``monitor.url`` or ``monitor.urls``. A separate process, so the
gateway serves on while it is stopped, slow or restarting.

BentoML imports this module in its arbiter too (for the service's settings): the monitor's
process, with Evidently and SHAP, is imported only where it runs, in the worker's ``__init__``.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import bentoml

from service import bentoml_fixes, metric_values, open_files
from service.config import CONFIG_ENV, load_config
from service.http import large_heads, pipelining, slow_clients
from service.monitor.app import build_monitor_app

bentoml_fixes.apply()
metric_values.install()
open_files.raise_limit()
monitor_app = build_monitor_app()
_CONFIG_PATH = Path(os.environ.get(CONFIG_ENV, "gateway.yaml")).resolve()
_CONFIG = load_config(_CONFIG_PATH) if _CONFIG_PATH.is_file() else None
slow_clients.apply(_CONFIG.server.request_read_timeout_s if _CONFIG else 0)
large_heads.apply()
pipelining.apply()


@bentoml.service(
    name="monitor",
    workers=1,
    # where a plain `bentoml serve` listens (its --host and --port win): loopback by default
    http={"host": _CONFIG.monitor.host, "port": _CONFIG.monitor.port} if _CONFIG else {},
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    # every gateway worker posts its records several times a second: not traced
    tracing={"excluded_urls": ["/records"]},
)
@bentoml.asgi_app(monitor_app, path="/")
class MonitorService:
    """Holds the monitor; one worker per monitor process (more monitors: more processes)."""

    def __init__(self) -> None:
        logging.getLogger("gateway").setLevel(logging.INFO)
        if _CONFIG is None:
            raise RuntimeError(f"no gateway config: set {CONFIG_ENV} to a gateway.yaml")
        from service.monitor.process import Monitor

        monitor_app.state.monitor = Monitor.start(_CONFIG_PATH, _CONFIG)
        # What is loaded by now (BentoML, Evidently, SHAP, scipy: some 390,000 objects) lives as
        # long as the worker: out of the collector's way. A run's window makes tens of thousands of
        # lists, which set off a full collection every third run or so; each walked that heap for
        # 0.2 s of CPU (bench/monitor_run.py: runs of 0.10-0.13 s and, every third, 0.31-0.33 s).
        gc.freeze()
