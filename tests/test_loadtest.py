"""The Locust load test, run for real (headless, short) against a real gateway and monitor: zero
failures, every kind of call made, labels stored; and its drift shape turns the inputs' drift on."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import MONITOR_SERVICE
from service.launch import free_port, running_server
from tests.conftest import write_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def locust(url: str, out: Path, seconds: int, env: dict | None = None) -> dict[str, dict]:
    """Run the locustfile headless; the per-name rows of its stats CSV."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtests" / "locustfile.py"),
        "--headless",
        "-u",
        "10",
        "-r",
        "10",
        "-t",
        f"{seconds}s",
        "--host",
        url,
        "--csv",
        str(out / "stats"),
        "--only-summary",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(out / "stats_stats.csv") as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


@pytest.fixture(scope="module")
def served(demo_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("locust")
    port = free_port()
    config = write_config(
        directory / "gateway.yaml",
        data_dir=str(directory / "data"),
        monitor={"url": f"http://127.0.0.1:{port}", "port": port, "flush_interval_ms": 100},
    )
    with running_server(config, port=port, service=MONITOR_SERVICE), running_server(config) as url:
        yield url, directory


def test_a_short_locust_run_has_zero_failures(served):
    url, directory = served
    rows = locust(url, directory, seconds=10)
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0, total
    assert {"/predict", "/v2/models/infer", "/feedback"} <= set(rows)


def test_the_drift_shape_runs_to_its_end_with_zero_failures(served, tmp_path):
    url, _ = served
    rows = locust(
        url,
        tmp_path,
        seconds=30,
        env={"GATEWAY_SHAPE": "drift", "GATEWAY_SHAPE_SECONDS": "6", "GATEWAY_USERS": "4"},
    )
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["Aggregated"]["Request Count"]) > 10


def test_the_shapes_drift_midway_and_step_up(monkeypatch):
    import loadtests.drift as drift
    from loadtests.shapes import DriftShape, StepLoadShape

    monkeypatch.setenv("GATEWAY_SHAPE_SECONDS", "100")
    shape = DriftShape()
    for run_time, drifting in ((10, False), (49, False), (51, True), (99, True)):
        monkeypatch.setattr(shape, "get_run_time", lambda t=run_time: t)
        assert shape.tick() is not None and drift.drifting is drifting
    monkeypatch.setattr(shape, "get_run_time", lambda: 100)
    assert shape.tick() is None
    steps = StepLoadShape()
    users = []
    for run_time in (0, 31, 61, 149, 151):
        monkeypatch.setattr(steps, "get_run_time", lambda t=run_time: t)
        users.append(steps.tick())
    assert [u[0] if u else None for u in users] == [10, 20, 30, 50, None]
