"""Shared fixtures: the demo models in a throwaway model store, and a real gateway serving them.

BentoML reads ``BENTOML_HOME`` once at import, so the store's location is set here, before any
test module imports BentoML.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

STORE_ROOT = Path(tempfile.mkdtemp(prefix="gateway-tests-"))
os.environ["BENTOML_HOME"] = str(STORE_ROOT / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
MONITOR_TOKEN = "monitor-token-of-the-test-session"
os.environ["GATEWAY_MONITOR_TOKEN"] = MONITOR_TOKEN  # every server the tests start inherits it
MONITOR_AUTH = {"Authorization": f"Bearer {MONITOR_TOKEN}"}
"""Headers for tests that call a monitor directly (gateways send the token themselves)."""
METRICS_TOKEN = "metrics-token-of-the-test-session"
os.environ["GATEWAY_METRICS_TOKEN"] = METRICS_TOKEN
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
"""Headers for reading /metrics of a gateway or a monitor (as Prometheus does)."""
ADMIN_TOKEN = "admin-token-of-the-test-session"
ADMIN_ENV = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
"""The environment that gives a server this admin token (servers have none unless given)."""
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
os.environ.pop("GATEWAY_ADMIN_TOKEN", None)

from service import registry  # noqa: E402  (after BENTOML_HOME)
from service.demo.models import DemoModel, build_demo_models  # noqa: E402
from service.launch import free_port, running_server  # noqa: E402


@pytest.fixture(scope="session")
def demo_models() -> dict[str, DemoModel]:
    """The demo models, built and registered once per test session, by tag."""
    built = build_demo_models(STORE_ROOT / "models")
    for model in built:
        registry.add_model(model.onnx_path, model.name, model.reference_path, version=model.version)
    return {f"{m.name}:{m.version}": m for m in built}


def write_config(path: Path, **overrides) -> Path:
    """A gateway.yaml serving the demo models, with top-level sections overridden."""
    config = {
        "model_store": str(STORE_ROOT / "bentoml"),
        "endpoints": {
            "cancer": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [
                    {"name": "stable", "model": "cancer:v1", "weight": 90},
                    {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
                ],
            },
            "diabetes": {"variants": [{"name": "stable", "model": "diabetes:v1"}]},
        },
    }
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


def local_monitor(port: int, **settings) -> dict:
    """A config's ``monitor`` section for a monitor on 127.0.0.1:``port``, flushing every 50 ms."""
    return {"url": f"http://127.0.0.1:{port}", "port": port, "flush_interval_ms": 50, **settings}


@pytest.fixture(scope="session")
def gateway_url(demo_models, tmp_path_factory) -> str:
    """A real gateway (``bentoml serve``) on a free loopback port, shared by the session."""
    directory = tmp_path_factory.mktemp("gateway")
    config = write_config(
        directory / "gateway.yaml", limits={"max_rows": 100, "max_body_bytes": 65536}
    )
    no_admin = {"GATEWAY_ADMIN_TOKEN": ""}
    with running_server(config, log_path=directory / "server.log", env=no_admin) as url:
        yield url


async def loopback_receiver(path: str, handle):
    """A small real HTTP server on 127.0.0.1 answering POST ``path`` with ``handle`` (an aiohttp
    handler): stands in for a monitor or a webhook in tests. Returns (URL, cleanup coroutine)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}{path}", runner.cleanup
