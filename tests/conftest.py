"""Shared fixtures: the demo models in a throwaway model store, and a real gateway serving them.

BentoML reads ``BENTOML_HOME`` once at import; tests/helpers.py sets it, so it is imported first.
"""
# ruff: noqa: I001  (the import order below is deliberate)

from __future__ import annotations

from tests.helpers import STORE_ROOT, write_config

import pytest

from service import registry
from service.demo.models import DemoModel, build_demo_models
from service.launch import running_server


@pytest.fixture(scope="session")
def demo_models() -> dict[str, DemoModel]:
    """The demo models, built and registered once per test session, by tag."""
    built = build_demo_models(STORE_ROOT / "models")
    for model in built:
        registry.add_model(model.onnx_path, model.name, model.reference_path, version=model.version)
    return {f"{m.name}:{m.version}": m for m in built}


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
