"""Starting and stopping an endpoint's A/B experiment, and keeping its record of weight changes.

An experiment's state (service/experiment_state.py) lives in the shared routing-state store beside
the routing it depends on, saved with compare-and-swap so two workers starting it at once cannot
both win. Starting needs every arm to take traffic; the arms' weights at that moment are what the
sample-ratio test expects. Weights may still be changed while it runs (switching a harmful arm off
must never wait), but each change is recorded in the experiment and the caller is warned: a change
that moves the arms' shares breaks the assignment, and its readout is "no_ship" from then on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import anyio

from service.config import ExperimentConfig
from service.errors import Conflict, NotFound
from service.experiment_state import RUNNING, STOPPED, ExperimentState, load_state, when
from service.gateway.process import Gateway
from traffic.store import RoutingState, VersionConflict, audit_entry


def configured(gateway: Gateway, endpoint: str) -> ExperimentConfig:
    """The endpoint's experiment in gateway.yaml (404 when it has none)."""
    endpoint_config = gateway.config.endpoints.get(endpoint)
    if endpoint_config is None or endpoint_config.experiment is None:
        raise NotFound(f"endpoint {endpoint!r} has no experiment in gateway.yaml")
    return endpoint_config.experiment


def arm_weights(gateway: Gateway, endpoint: str, experiment: ExperimentConfig) -> dict[str, float]:
    """Each arm's weight in the routing state as this worker has it (0 for an arm removed)."""
    table = gateway.dataplane.table(endpoint)
    weights = {v.name: v.weight for v in table.variants if v.role != "shadow"}
    return {arm: weights.get(arm, 0.0) for arm in experiment.arms}


async def _load(gateway: Gateway, endpoint: str) -> tuple[int, ExperimentState | None]:
    return await anyio.to_thread.run_sync(load_state, gateway.routing.store, endpoint)


async def _save(
    gateway: Gateway, endpoint: str, state: ExperimentState, revision: int, client: str, action: str
) -> None:
    store = gateway.routing.store
    try:
        await anyio.to_thread.run_sync(store.save_experiment, endpoint, state.to_dict(), revision)
    except VersionConflict:
        raise Conflict(f"the experiment of {endpoint} changed meanwhile; try again") from None
    detail = {"weights": dict(state.weights), "status": state.status}
    await anyio.to_thread.run_sync(
        store.append_audit, audit_entry(client, action, endpoint, detail)
    )


async def start(gateway: Gateway, endpoint: str, client: str) -> ExperimentState:
    """Open a new window for the experiment (409 while one runs, or while an arm is dark)."""
    experiment = configured(gateway, endpoint)
    revision, state = await _load(gateway, endpoint)
    if state is not None and state.status == RUNNING:
        raise Conflict(
            f"the experiment of {endpoint} has been running since {when(state.started_at)}; "
            "stop it first"
        )
    await gateway.routing.refresh()  # weights another worker set a moment ago count
    weights = arm_weights(gateway, endpoint, experiment)
    dark = [arm for arm, weight in weights.items() if weight <= 0]
    if dark:
        raise Conflict(f"arm(s) {dark} take no traffic: give them weights first")
    started = ExperimentState(RUNNING, time.time(), weights, client)
    await _save(gateway, endpoint, started, revision, client, "start_experiment")
    return started


async def stop(gateway: Gateway, endpoint: str, client: str) -> ExperimentState:
    """Close the experiment's window; its readout stays (409 unless it runs)."""
    configured(gateway, endpoint)
    revision, state = await _load(gateway, endpoint)
    if state is None or state.status != RUNNING:
        raise Conflict(f"the experiment of {endpoint} is not running")
    stopped = dataclasses.replace(state, status=STOPPED, stopped_at=time.time(), stopped_by=client)
    await _save(gateway, endpoint, stopped, revision, client, "stop_experiment")
    return stopped


async def note_routing_changes(
    gateway: Gateway, client: str, before: RoutingState | None
) -> list[str]:
    """After a routing change (``before``: the state it changed): record, in each running
    experiment whose arms' weights it moved or whose users it moved between arms, the arms'
    weights now, and whether users moved; one warning per such experiment."""
    warnings = []
    for endpoint, endpoint_config in gateway.config.endpoints.items():
        experiment = endpoint_config.experiment
        if experiment is None or endpoint not in gateway.dataplane.snapshot.tables:
            continue
        revision, state = await _load(gateway, endpoint)
        if state is None or state.status != RUNNING:
            continue
        weights = arm_weights(gateway, endpoint, experiment)
        last = state.weight_changes[-1]["weights"] if state.weight_changes else state.weights
        earlier = before.tables.get(endpoint) if before is not None else None
        table = gateway.dataplane.table(endpoint)
        moved = earlier is not None and earlier.moves_users_between(table, experiment.arms)
        if weights == dict(last) and not moved:
            continue
        change = {"at": time.time(), "weights": weights, "by": client, "moved_users": moved}
        noted = dataclasses.replace(state, weight_changes=[*state.weight_changes, change])
        await _save(gateway, endpoint, noted, revision, client, "experiment_weights_changed")
        warnings.append(_warning(endpoint, state.weights, weights, moved))
    return warnings


def _warning(
    endpoint: str, started: Mapping[str, float], now: Mapping[str, float], moved: bool
) -> str:
    what = "this change moved users between its arms" if moved else "users may move between arms"
    return (
        f"the experiment of {endpoint} is running with the weights {dict(started)}; its arms now "
        f"have {dict(now)}: {what}, so its readout is no_ship from now on "
        "(stop the experiment and start it again for a clean window)"
    )
