"""The monitor as a BentoML service: ``bentoml serve service.monitor_bento:Monitor`` (one worker).

It owns the monitor store (``<data_dir>/monitor.sqlite3``) and takes records and labels from every
gateway worker and replica over HTTP (service/monitor_app.py); it runs the analysis and, being a
single process, is the one writer that decides rollouts (service/rollouts.py). Started by ``gateway monitor``; the
gateway finds it at ``monitor.url``. A separate process, so the gateway serves on while it is
stopped, slow or restarting.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml

from monitors.reports import ReportArchive
from monitors.store import MonitorStore
from service import bentoml_fixes
from service.config import load_config
from service.monitor_app import build_monitor_app
from service.monitor_metrics import MonitorMetrics
from service.monitor_runs import MonitorRunner
from service.notifier import DriftAlarm, Notifier
from service.rollout_evidence import EvidenceGatherer
from service.rollouts import RolloutService
from service.routing import STATE_FILE
from traffic.store import SQLiteStateStore

CONFIG_ENV = "GATEWAY_CONFIG"
MONITOR_FILE = "monitor.sqlite3"
REPORTS_DIR = "reports"
bentoml_fixes.apply()
monitor_app = build_monitor_app()


@bentoml.service(
    name="monitor",
    workers=1,
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
)
@bentoml.asgi_app(monitor_app, path="/")
class Monitor:
    """Holds the store; one process, so SQLite writes never contend across workers."""

    def __init__(self) -> None:
        config = load_config(Path(os.environ.get(CONFIG_ENV, "gateway.yaml")).resolve())
        store = MonitorStore(config.data_dir / MONITOR_FILE)
        metrics = MonitorMetrics()
        monitor_app.state.store = store
        monitor_app.state.metrics = metrics
        monitor_app.state.label_retention_s = config.monitor.label_retention_s
        archive = ReportArchive(config.data_dir / REPORTS_DIR, config.monitor.report_keep)
        monitor_app.state.archive = archive
        routing = SQLiteStateStore(config.data_dir / STATE_FILE)

        def roles() -> dict[tuple[str, str], str]:
            state = routing.load()
            tables = state.tables if state else config.tables()
            return {(e, v.name): v.role for e, t in tables.items() for v in t.variants}

        notifier = Notifier(config.notifications, metrics)
        runner = MonitorRunner(
            config.monitor, store, metrics, archive, roles, DriftAlarm(notifier).observe
        )
        monitor_app.state.runner = runner
        monitor_app.state.rollouts = RolloutService(
            config,
            store,
            routing,
            EvidenceGatherer(store, lambda: runner.latest),
            metrics,
            notifier,
        )
