"""The routing follower without a server: a store that fails (locked, gone) is polled with growing
backoff and logged once, and its recovery is logged (unit test: the store is a stand-in)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import statistics
import time
from dataclasses import replace
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from prometheus_client import CollectorRegistry

from service.gateway import routing
from service.gateway.dataplane import Snapshot
from service.gateway.metrics import GatewayMetrics
from service.gateway.routing import RoutingControl
from tests.helpers import TWO_FEATURE_CARD
from traffic.table import EndpointTable, VariantSpec


class FailingStore:
    """``current_version`` fails ``failures`` times, then answers the installed version."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    def current_version(self) -> int:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise sqlite3.OperationalError("database is locked")
        return 1


@pytest.mark.alone
async def test_following_backs_off_while_the_store_fails_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(routing, "POLL_S", 0.01)
    monkeypatch.setattr(routing, "MAX_BACKOFF_S", 0.16)
    store = FailingStore(failures=6)
    dataplane = SimpleNamespace(snapshot=SimpleNamespace(version=1))
    control = RoutingControl(store, MagicMock(), dataplane, MagicMock())
    with caplog.at_level(logging.INFO, logger="gateway.routing"):
        task = asyncio.create_task(control.follow())
        await asyncio.sleep(1.2)
        task.cancel()
    gaps = [b - a for a, b in zip(store.calls, store.calls[1:7])]
    assert all(b > a * 1.5 for a, b in zip(gaps[:3], gaps[1:4])), gaps  # doubling: 0.02, 0.04, ...
    assert all(0.15 <= gap < 0.3 for gap in gaps[3:]), gaps  # ... capped at MAX_BACKOFF_S
    after = [b - a for a, b in zip(store.calls[7:], store.calls[8:])]
    # back to polling once it recovered: every gap well under the backoff cap (one can stretch
    # when the machine is busy: a 70 ms gap was seen under CI), most of them the poll interval
    assert after and max(after) < 0.15 and statistics.median(after) < 0.03, after
    warnings = [r for r in caplog.records if "cannot follow" in r.getMessage()]
    assert len(warnings) == 1 and "database is locked" in warnings[0].getMessage()
    assert "following the routing state again" in caplog.text


class StandInDataPlane:
    """What ``publish`` needs of the data plane: the installed snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def install(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


def loaded(version: str) -> SimpleNamespace:
    """A stand-in for a loaded model version of ``TWO_FEATURE_CARD``'s model."""

    async def close() -> None:
        pass

    card = replace(TWO_FEATURE_CARD, version=version)
    return SimpleNamespace(
        card=card, provider="CPUExecutionProvider", batcher=SimpleNamespace(close=close)
    )


async def test_a_removed_variant_and_its_retired_model_leave_the_metrics(monkeypatch):
    monkeypatch.setattr(routing, "GRACE_S", 0.05)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(0.1, registry)
    stable, extra = VariantSpec("stable", "m:v1"), VariantSpec("extra", "m:v2", "candidate", 10)
    models = {"m:v1": loaded("v1"), "m:v2": loaded("v2")}
    for model in models.values():
        metrics.model_loaded.labels("m", model.card.version, model.provider).set(1)
    before = Snapshot(1, {"e": EndpointTable("e", (stable, extra))}, models)
    control = RoutingControl(MagicMock(), MagicMock(), StandInDataPlane(before), metrics)
    control.export(before)
    weight = {"endpoint": "e", "variant": "extra"}
    assert registry.get_sample_value("gateway_variant_weight", weight) == 10

    after = Snapshot(2, {"e": EndpointTable("e", (stable,))}, {"m:v1": models["m:v1"]})
    control.publish(after)
    assert registry.get_sample_value("gateway_variant_weight", weight) is None
    await asyncio.sleep(0.2)  # past the grace a retired model is kept for
    loaded_v = {"model": "m", "provider": "CPUExecutionProvider"}
    assert (
        registry.get_sample_value("gateway_model_loaded", {**loaded_v, "model_version": "v1"}) == 1
    )
    assert (
        registry.get_sample_value("gateway_model_loaded", {**loaded_v, "model_version": "v2"})
        is None
    )
