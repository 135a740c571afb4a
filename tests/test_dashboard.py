"""The dashboard is true: every panel's query (and annotation) returns data from a real Prometheus,
started here on loopback with the repository's scrape config, scraping a real gateway and monitor
that serve traffic, labels (of a classifier and of a regressor), a shadow, and two rollouts (one
promoted, one rolled back)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from service.launch import MONITOR_SERVICE, free_port, running_server, stop
from tests.helpers import (
    ADMIN_AUTH,
    ADMIN_ENV,
    METRICS_TOKEN,
    MONITOR_AUTH,
    drive,
    local_monitor,
    write_config,
)
from traffic.rollout import TERMINAL

pytestmark = pytest.mark.integration
GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gateway.json"
FAST_ROLLOUT = {
    "candidate": "candidate",
    "steps": [{"weight": 30, "min_duration_s": 1}],
    "interval_s": 0.5,
    "guard_window_s": 5,
    "revert_window_s": 1,
    "guardrails": [{"metric": "error_rate", "max": 0.05, "min_count": 10}],
    "comparisons": [{"metric": "error_rate", "margin": 0.1, "min_samples": 30}],
    "offline_gate": {"margin": 0.05},
}
MIN_ROUNDS, MAX_ROUNDS = 2, 8
"""Rounds of traffic (4 s each): on until both rollouts ended, then the runs and scrapes."""
VARIABLES = {"$endpoint": ".*", "$variant": ".*", "$__rate_interval": "1m", "$slo_seconds": "0.1"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation, variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in board["panels"]
        for t in p.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"]]
    filled = []
    for where, expr in found:
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        filled.append((where, expr))
    return filled


def query_problem(prometheus: str, expr: str) -> str | None:
    """Why ``expr`` is not a working panel query (invalid, or no data), or None."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as error:
        return f"invalid: {json.load(error).get('error')}"
    if not body["data"]["result"]:
        return "no data"
    return None


def start_prometheus(directory: Path, gateway: str, monitor: str) -> tuple[subprocess.Popen, str]:
    """The repository's scrape config with this test's targets and a 1 s interval."""
    config = yaml.safe_load((GRAFANA / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(GRAFANA / "prometheus" / "alerts.yml")]
    targets = {"gateway": gateway, "gateway-monitor": monitor}
    (directory / "metrics.token").write_text(METRICS_TOKEN)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        job["authorization"]["credentials_file"] = str(directory / "metrics.token")
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "prometheus.log", "wb"),  # noqa: SIM115 - lives with the process
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ready, and both targets scraped once
        try:
            if query_problem(url, 'count(up{job=~"gateway|gateway-monitor"} == 1) == 2') is None:
                return process, url
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError("prometheus did not scrape: " + (directory / "prometheus.log").read_text())


def test_the_committed_dashboard_is_what_the_generator_writes():
    import runpy

    render = runpy.run_path(str(GRAFANA / "build_dashboard.py"))["render"]
    assert DASHBOARD.read_text() == render(), "run: .venv/bin/python grafana/build_dashboard.py"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards():
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/gateway.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "endpoint", "variant", "slo_seconds"]


async def _rollouts_ended(session: aiohttp.ClientSession, monitor_url: str) -> bool:
    """Whether both rollouts have reached their end (the promotion's and rollback's series)."""
    async with session.get(f"{monitor_url}/rollouts", headers=MONITOR_AUTH) as answer:
        assert answer.status == 200, await answer.text()
        rollouts = (await answer.json())["rollouts"]
    return len(rollouts) == 2 and all(
        r["state"] is not None and r["state"]["phase"] in TERMINAL for r in rollouts
    )


async def _traffic(url: str, monitor_url: str) -> None:
    """Rounds of predictions, labels and rewards until both rollouts have ended."""
    async with aiohttp.ClientSession() as session:
        start = f"{url}/admin/experiments/cancer-ab/start"
        async with session.post(start, headers=ADMIN_AUTH) as answer:
            assert answer.status == 200
        for round_ in range(MAX_ROUNDS):
            if round_ >= MIN_ROUNDS and await _rollouts_ended(session, monitor_url):
                break
            answers = []
            for endpoint in ("cancer", "cancer-bad", "cancer-shadow"):
                answers += await drive(
                    session, url, 1.0, users=1_000_000, endpoint=endpoint, concurrency=4
                )  # a rollout counts each user once per step: new users let it pass
            tested = await drive(session, url, 1.0, endpoint="cancer-ab", concurrency=4)
            labels = [{"request_id": a[4], "label": "benign"} for a in answers if a[2] == 200]
            valued = await drive(session, url, 0.5, endpoint="diabetes", row=[0.01] * 10)
            labels += [{"request_id": a[4], "label": 150.0} for a in valued if a[2] == 200]
            rewards = [
                {"request_id": a[4], "metric": "converted", "value": int(a[1] % 3 == 0)}
                for a in tested
                if a[2] == 200
            ]
            feedback = {"labels": labels, "rewards": rewards}
            async with session.post(f"{url}/feedback", json=feedback) as answer:
                assert answer.status == 200
        await asyncio.sleep(0.5)
        async with session.post(f"{monitor_url}/runs", headers=MONITOR_AUTH) as answer:
            assert answer.status == 200


async def test_every_panel_query_returns_data_from_a_real_prometheus(demo_models, tmp_path):
    port = free_port()
    candidate = {"name": "candidate", "model": "cancer:v2", "role": "candidate", "weight": 0}
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port, min_rows=20, attribution_rows=32),
        endpoints={
            "cancer": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [{"name": "stable", "model": "cancer:v1"}, candidate],
                "rollout": FAST_ROLLOUT,
            },
            "cancer-bad": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [
                    {"name": "stable", "model": "cancer:v1"},
                    {**candidate, "faults": {"error_rate": 0.5}},
                ],
                "rollout": FAST_ROLLOUT,
            },
            "diabetes": {"variants": [{"name": "stable", "model": "diabetes:v1"}]},
            "cancer-shadow": {
                "variants": [
                    {"name": "stable", "model": "cancer:v2"},
                    {"name": "mirror", "model": "cancer:v1", "role": "shadow", "mirror": 1.0},
                ]
            },
            "cancer-ab": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [
                    {"name": "stable", "model": "cancer:v1", "weight": 50},
                    {**candidate, "weight": 50},
                ],
                "experiment": {
                    "arms": ["stable", "candidate"],
                    "rewards": {"converted": {}},
                    "primary": "converted",
                    "min_units": 10,
                },
            },
        },
    )
    with (
        running_server(config, port=port, service=MONITOR_SERVICE) as monitor_url,
        running_server(config, env=ADMIN_ENV) as url,
    ):
        prometheus, prometheus_url = start_prometheus(tmp_path, url[7:], monitor_url[7:])
        try:
            await _traffic(url, monitor_url)
            time.sleep(3)  # a few more scrapes
            problems = {
                where: problem
                for where, expr in dashboard_queries()
                if (problem := query_problem(prometheus_url, expr)) is not None
            }
            misspelled = query_problem(prometheus_url, "rate(gateway_request_total[1m])")
        finally:
            stop(prometheus)
    assert not problems, json.dumps(problems, indent=1)
    assert misspelled == "no data"  # a misspelled metric in a panel fails this test
    assert len(dashboard_queries()) >= 25


def test_every_query_is_valid_promql():
    """promtool parses every query (as a recording rule), with the variables filled in."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    checked = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "rules", "/dev/stdin"],
        input=yaml.safe_dump(rules).encode(),
        capture_output=True,
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert re.search(r"SUCCESS: \d+ rules found", checked.stdout.decode())
