"""The Kubernetes manifests under deploy/ and the Bento they run: they parse, and they match what
the code accepts (the config validates, every variable the code reads comes from the Secret, the
ports and probes are the servers' own, the Bento carries every package and module it imports)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import tomllib
import yaml

from service.config import CONFIG_ENV, parse_config
from service.launch import GATEWAY_SERVICE, MONITOR_SERVICE
from service.secrets import (
    ADMIN_TOKEN_ENV,
    METRICS_TOKEN_ENV,
    MONITOR_TOKEN_ENV,
    WEBHOOK_SECRET_ENV,
)

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "grafana" / "prometheus" / "alerts.yml"


def documents() -> list[dict]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def named(kind: str, name: str) -> dict:
    matches = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"one {kind} {name} expected, found {len(matches)}"
    return matches[0]


def container(deployment: str) -> dict:
    (only,) = named("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


def test_every_manifest_parses_as_kubernetes_objects():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents())
    assert kinds == [
        ("ConfigMap", "gateway-config"),
        ("ConfigMap", "gateway-prometheus"),
        ("Deployment", "gateway"),
        ("Deployment", "gateway-monitor"),
        ("Job", "gateway-db-upgrade"),
        ("Secret", "gateway-secrets"),
        ("Service", "gateway"),
        ("Service", "gateway-monitor"),
    ]
    for document in documents():
        assert {"apiVersion", "kind", "metadata"} <= document.keys()


def test_the_config_is_one_the_gateway_accepts_with_state_on_postgres():
    text = named("ConfigMap", "gateway-config")["data"]["gateway.yaml"]
    config = parse_config(yaml.safe_load(text), "/etc/gateway/gateway.yaml")
    assert config.state.backend == "postgres"
    secret = named("Secret", "gateway-secrets")["stringData"]
    wanted = {config.state.dsn_env, ADMIN_TOKEN_ENV, MONITOR_TOKEN_ENV, METRICS_TOKEN_ENV}
    assert wanted | {WEBHOOK_SECRET_ENV} == set(secret)
    assert config.server.host == config.monitor.host == "0.0.0.0"
    gateway, monitor = container("gateway"), container("gateway-monitor")
    assert config.monitor.monitor_urls() == [f"http://gateway-monitor:{config.monitor.port}"]
    for pod, service, port in (
        (gateway, GATEWAY_SERVICE, config.server.port),
        (monitor, MONITOR_SERVICE, config.monitor.port),
    ):
        command = pod["command"]
        assert command[:3] == ["bentoml", "serve", service]
        assert command[command.index("--port") + 1] == str(port)
        assert {"name": CONFIG_ENV, "value": "/etc/gateway/gateway.yaml"} in pod["env"]
        assert pod["envFrom"] == [{"secretRef": {"name": "gateway-secrets"}}]
        ports = {p["name"]: p["containerPort"] for p in pod["ports"]}
        assert ports["http"] == port
        assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert pod["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]}["grpc"] == (
        config.server.grpc_port
    )
    (job,) = named("Job", "gateway-db-upgrade")["spec"]["template"]["spec"]["containers"]
    assert job["command"][-4:] == ["db", "upgrade", "--config", "/etc/gateway/gateway.yaml"]


def test_services_select_their_deployments_and_replicas_are_several():
    for name in ("gateway", "gateway-monitor"):
        deployment, service = named("Deployment", name), named("Service", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["replicas"] >= 2


def test_the_bento_carries_every_package_and_module_the_code_needs():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = set(project["project"]["dependencies"]) - {
        d for d in project["project"]["dependencies"] if d.startswith("locust")
    }  # Locust drives load against the gateway; it does not run in it
    assert needed <= set(bentofile["python"]["packages"])
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    included = set(bentofile["include"])
    assert {f"{p.rstrip('*')}/**/*.py" for p in packages} <= included
    assert bentofile["service"] == GATEWAY_SERVICE


def test_the_prometheus_config_passes_promtool(tmp_path):
    """promtool checks the scrape config as Prometheus would load it, with the rule file and the
    token file where the ConfigMap and the Secret's mount put them (here: the repository's rules,
    a token file of the test's). Debian's promtool is built without Kubernetes discovery, so each
    ``kubernetes_sd_configs`` stands in as a static target; authorization, relabeling and rules
    are checked as written."""
    text = named("ConfigMap", "gateway-prometheus")["data"]["prometheus.yml"]
    text, discoveries = re.subn(
        r"kubernetes_sd_configs:\n(\s+)- role: pod",
        r'static_configs:\n\1- targets: ["127.0.0.1:3000"]',
        text,
    )
    assert discoveries == 2
    token = tmp_path / "GATEWAY_METRICS_TOKEN"
    token.write_text("a-metrics-token")
    text = text.replace("/etc/prometheus/rules/alerts.yml", str(ALERTS)).replace(
        "/etc/prometheus/secrets/GATEWAY_METRICS_TOKEN", str(token)
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    checked = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
