"""The Locust load test, run for real (headless, short) against a real gateway and monitor: zero
failures, every kind of call made, labels stored; and its drift shape turns the inputs' drift on."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.launch import MONITOR_SERVICE, free_port, running_server
from tests.helpers import local_monitor, write_config

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
    port, grpc_port = free_port(), free_port()
    config = write_config(
        directory / "gateway.yaml",
        server={"grpc_port": grpc_port},
        data_dir=str(directory / "data"),
        monitor=local_monitor(port, flush_interval_ms=100),
    )
    with running_server(config, port=port, service=MONITOR_SERVICE), running_server(config) as url:
        yield url, directory, f"127.0.0.1:{grpc_port}"


def test_a_short_locust_run_has_zero_failures(served):
    """HTTP users and, behind GATEWAY_GRPC, gRPC users in the same run."""
    url, directory, grpc_address = served
    rows = locust(url, directory, seconds=10, env={"GATEWAY_GRPC": grpc_address})
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0, total
    assert {"/predict", "/v2/models/infer", "/feedback", "grpc ModelInfer"} <= set(rows)
    assert int(rows["grpc ModelInfer"]["Request Count"]) > 5


def test_the_drift_shape_runs_to_its_end_with_zero_failures(served, tmp_path):
    url, _, _ = served
    rows = locust(
        url,
        tmp_path,
        seconds=30,
        env={"GATEWAY_SHAPE": "drift", "GATEWAY_SHAPE_SECONDS": "6", "GATEWAY_USERS": "4"},
    )
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["Aggregated"]["Request Count"]) > 10


def test_the_schedules_drift_midway_and_step_up():
    """(Locust itself is not imported here: it monkey-patches the test process with gevent.)"""
    from loadtests.schedule import drifting_load, step_load

    drifts = [drifting_load(t, 100, 20) for t in (10, 49, 51, 99, 100)]
    assert [d for _, d in drifts[:4]] == [False, False, True, True]
    assert drifts[0][0] == (20, 10.0) and drifts[4][0] is None
    users = [step_load(t, 30, 10, 5) for t in (0, 31, 61, 149, 151)]
    assert [u[0] if u else None for u in users] == [10, 20, 30, 50, None]
