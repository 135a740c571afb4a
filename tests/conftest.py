"""Shared fixtures: the demo models in a throwaway model store, a real gateway serving them, and
a real PostgreSQL cluster (with ``open_database``, which runs a store test on both engines).

BentoML reads ``BENTOML_HOME`` once at import; tests/helpers.py sets it, so it is imported first.
"""
# ruff: noqa: I001  (the import order below is deliberate)

from __future__ import annotations

from tests.helpers import STORE_PREFIX, STORE_ROOT, write_config

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from service import registry
from service.demo.models import DemoModel, build_demo_models
from service.launch import running_server
from storage.database import Database
from storage.postgres import PostgresDatabase
from storage.sqlite import SQLiteDatabase
from tests.postgres import Cluster, PostgresUnavailable, running_cluster

BACKENDS = ("sqlite", "postgres")


def pytest_sessionstart() -> None:
    """Removes the model stores of test processes that are gone: one killed leaves its store
    behind, and so did every one before stores were removed at the end, about 66 MB each, until a
    machine that keeps /tmp between runs had no room left to start a server."""
    for store in STORE_ROOT.parent.glob(f"{STORE_PREFIX}*"):
        if store != STORE_ROOT and _left_behind(store):
            shutil.rmtree(store, ignore_errors=True)


def _left_behind(store: Path) -> bool:
    """Whether the process that made ``store`` is gone (stores named before the process id was
    in their name: when untouched for an hour, longer than any test session)."""
    pid = store.name.removeprefix(STORE_PREFIX).split("-")[0]
    if pid.isdigit():
        return not psutil.pid_exists(int(pid))
    try:
        return time.time() - store.stat().st_mtime > 3600
    except FileNotFoundError:  # another process removed it meanwhile
        return False


def pytest_sessionfinish() -> None:
    """Removes this process's throwaway model store when its session ends."""
    shutil.rmtree(STORE_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_models() -> dict[str, DemoModel]:
    """The demo models, built and registered once per test session, by tag."""
    built = build_demo_models(STORE_ROOT / "models")
    for model in built:
        registry.add_model(model.onnx_path, model.name, model.reference_path, version=model.version)
    return {f"{m.name}:{m.version}": m for m in built}


@pytest.fixture(scope="session")
def regressor_v9(demo_models) -> str:
    """The demo regressor again as ``diabetes:v9``, a version no cancer model has: a variant a
    cancer endpoint must refuse for its inputs and task, not for its version."""
    diabetes = demo_models["diabetes:v1"]
    return registry.add_model(
        diabetes.onnx_path, "diabetes", diabetes.reference_path, version="v9"
    ).tag


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A real PostgreSQL server for the session (fails, saying why, when none can start)."""
    try:
        with running_cluster() as cluster:
            yield cluster
    except PostgresUnavailable as error:
        pytest.fail(f"PostgreSQL is needed for this test and could not start: {error}")


@pytest.fixture(params=BACKENDS)
def open_database(request, tmp_path) -> Iterator[Callable[[], Database]]:
    """Opens the test's database, on each engine in turn: one SQLite file, or one fresh
    PostgreSQL database. Opening it again is what a restarted process does; every connection
    is closed when the test ends."""
    opened: list[Database] = []
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres").new_database()

        def open_() -> Database:
            opened.append(PostgresDatabase(dsn))
            return opened[-1]

    else:

        def open_() -> Database:
            opened.append(SQLiteDatabase(tmp_path / "store.sqlite3", busy_timeout_s=10.0))
            return opened[-1]

    yield open_
    for database in opened:
        database.close()
