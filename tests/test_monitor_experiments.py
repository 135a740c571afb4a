"""The monitor's A/B readouts read from a real store: a regressor's accuracy counts its answers
within the control model's usual error of the label (registry.accuracy_tolerance), as rollouts
do; before, a value had to equal its label, and every arm of a regressor read 0."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitors.records import PredictionRecord
from monitors.reports import ReportArchive
from monitors.store import MonitorStore
from service import registry
from service.config import parse_config
from service.experiment_state import ExperimentState
from service.monitor.experiments import ExperimentReadouts
from service.monitor.metrics import MonitorMetrics
from tests.helpers import monitor_in_process
from traffic.store import SQLStateStore


def readouts(
    tmp_path, open_database, models: tuple[str, str], restart_of: ExperimentReadouts | None = None
) -> ExperimentReadouts:
    """The monitor's readouts of experiment "e" (arms a and b), started at t = 1000; with
    ``restart_of``, a monitor started again on that one's stores."""
    config = parse_config(
        {
            "data_dir": str(tmp_path),
            "endpoints": {
                "e": {
                    "routing": {"key": {"header": "x-user-id"}},
                    "variants": [
                        {"name": "a", "model": models[0], "weight": 50},
                        {"name": "b", "model": models[1], "weight": 50, "role": "candidate"},
                    ],
                    "experiment": {
                        "arms": ["a", "b"],
                        "rewards": {"converted": {"kind": "binary"}},
                        "primary": "converted",
                    },
                }
            },
        }
    )
    metrics = MonitorMetrics(CollectorRegistry())
    archive = ReportArchive(tmp_path / "reports")
    if restart_of is not None:
        stores = restart_of.store, restart_of.state_store
        return ExperimentReadouts(config, *stores, metrics, archive)
    state_store = SQLStateStore(open_database())
    state = ExperimentState("running", 1000.0, {"a": 50, "b": 50}, "test")
    state_store.save_experiment("e", state.to_dict(), 0)
    return ExperimentReadouts(config, MonitorStore(open_database()), state_store, metrics, archive)


def gauge(experiments: ExperimentReadouts, name: str, **labels) -> float | None:
    return experiments.metrics.registry.get_sample_value(name, {"endpoint": "e", **labels})


def answered(experiments: ExperimentReadouts, per_arm: int) -> list[PredictionRecord]:
    """``per_arm`` answers ("benign") in each of arms a and b from t = 1001, stored."""
    records = [
        PredictionRecord(f"e:{arm}{i}", 1001.0 + i, "e", arm, "m", ["benign"], 0.01)
        for arm in "ab"
        for i in range(per_arm)
    ]
    experiments.store.add_records(records)
    return records


def b_converts_more(experiments: ExperimentReadouts) -> None:
    """400 units in each of arms a and b, each converting: every one of b's, one in ten of
    a's (a win for b by far, with the units split evenly)."""
    records = answered(experiments, 400)
    experiments.store.add_rewards(
        [
            (r.request_id, "converted", float(r.variant == "b" or i % 10 == 0), 1e12)
            for i, r in enumerate(records)
        ]
    )


def test_a_regressors_accuracy_is_its_share_within_the_control_models_usual_error(
    tmp_path, open_database, demo_models, regressor_v9
):
    experiments = readouts(tmp_path, open_database, ("diabetes:v1", regressor_v9))
    within = registry.accuracy_tolerance("diabetes:v1")
    assert within is not None and within > 0
    rng = np.random.default_rng(2)
    records, labels = [], []
    for arm, spread in (("a", 0.5), ("b", 2.0)):  # errors as a share of the tolerance
        for i, error in enumerate(rng.uniform(-spread, spread, 400) * within):
            request_id = f"e:{arm}{i}"
            records.append(
                PredictionRecord(request_id, 1001.0 + i, "e", arm, "m", [100 + float(error)], 0.01)
            )
            labels.append((request_id, 100.0))
    experiments.store.add_records(records)
    experiments.store.add_labels(labels)
    accuracy = experiments.describe("e", now=2000.0)["metrics"]["accuracy"]
    assert accuracy["a"]["mean"] == 1.0  # every error within the tolerance
    assert accuracy["b"]["mean"] == pytest.approx(0.5, abs=0.06)  # half of them


def test_a_classifiers_accuracy_is_its_share_of_answers_equal_to_the_label(
    tmp_path, open_database, demo_models
):
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    assert registry.accuracy_tolerance("cancer:v1") is None
    records = answered(experiments, 10)
    experiments.store.add_labels(
        [(r.request_id, "benign" if r.variant == "a" else "malignant") for r in records]
    )
    accuracy = experiments.describe("e", now=2000.0)["metrics"]["accuracy"]
    assert (accuracy["a"]["mean"], accuracy["b"]["mean"]) == (1.0, 0.0)


def test_a_readout_whose_control_model_left_the_store_is_still_given(tmp_path, open_database):
    experiments = readouts(tmp_path, open_database, ("ghost:v1", "ghost:v2"))
    records = [
        PredictionRecord(f"e:a{i}", 1001.0 + i, "e", "a", "m", ["x"], 0.01) for i in range(3)
    ]
    experiments.store.add_records(records)
    experiments.store.add_labels([(r.request_id, "x") for r in records])
    described = experiments.describe("e", now=2000.0)
    assert described["metrics"]["accuracy"]["a"]["mean"] == 1.0  # read as a classifier's


def test_an_experiment_whose_arms_gateway_yaml_renamed_since_it_started_gives_no_ship(
    tmp_path, open_database, demo_models
):
    """Started with arms c and d (an earlier gateway.yaml), read with a and b: the sample-ratio
    test counted units of c and d, found none, and never flagged, so a clear win of b shipped
    on an assignment nothing had checked."""
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    started = ExperimentState("running", 1000.0, {"c": 50, "d": 50}, "test")
    experiments.state_store.save_experiment("e", started.to_dict(), 1)
    b_converts_more(experiments)
    described = experiments.describe("e", now=2000.0)
    assert described["sample_ratio"]["flagged"]
    assert described["verdict"] == "no_ship" and "sample ratio mismatch" in described["reason"]


def test_pruning_spares_an_experiments_window_until_its_readout_is_final_which_then_stays(
    tmp_path, open_database, demo_models
):
    """Records are kept 7 days by default and experiments often run longer: pruning took the
    window's first units, and a 14-day readout counted only its last 7 days. And a stopped
    experiment was read out of what pruning left: a week after the stop it read 0 units. Once
    its join window has closed its readout is final, kept with its state, and read from there."""
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    day = 86_400.0
    records = [
        PredictionRecord(f"e:{arm}{i}", 1000.0 + i * day / 10, "e", arm, "m", ["benign"], 0.01)
        for arm in "ab"
        for i in range(140)  # 14 days, ten a day
    ]
    experiments.store.add_records(records)
    now = 1000.0 + 14 * day
    before = experiments.describe("e", now=now)["sample_ratio"]["units"]
    assert before == {"a": 140, "b": 140}
    week = 7 * day
    assert experiments.windows_kept() == {"e": 1000.0}
    experiments.store.prune(now - week, now - week, now, experiments.windows_kept())
    experiments.export(now=now)  # as the leader does every interval: read the store again
    assert experiments.describe("e", now=now)["sample_ratio"]["units"] == before
    stopped = ExperimentState("stopped", 1000.0, {"a": 50, "b": 50}, "test", stopped_at=now)
    experiments.state_store.save_experiment("e", stopped.to_dict(), 1)
    experiments.export(now=now + day - 1)  # rewards may still join it
    assert experiments.windows_kept() == {"e": 1000.0}
    experiments.export(now=now + day)  # its join window (a day) has closed
    assert experiments.windows_kept() == {}  # then pruned as any record
    experiments.store.prune(now + 2 * week, now + 2 * week, now + 2 * week, {})
    after = experiments.describe("e", now=now + 2 * week)
    assert (after["status"], after["computed_at"]) == ("stopped", now + day)
    assert after["sample_ratio"]["units"] == before and "final" not in after
    restarted = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"), experiments)
    restarted.export(now=now + 2 * week)  # its gauges come back from the final readout
    for monitor in (experiments, restarted):
        assert gauge(monitor, "gateway_experiment_units", arm="a") == 140
        assert gauge(monitor, "gateway_experiment_running") == 0
        assert gauge(monitor, "gateway_experiment_verdict", verdict=after["verdict"]) == 1


def test_the_monitors_pruning_spares_a_running_experiments_window(
    tmp_path, demo_models, monkeypatch
):
    endpoint = {
        "variants": [
            {"name": "a", "model": "cancer:v1", "weight": 50},
            {"name": "b", "model": "cancer:v2", "weight": 50, "role": "candidate"},
        ],
        "experiment": {"arms": ["a", "b"], "primary": "accuracy"},
    }
    monitor = monitor_in_process(tmp_path, monkeypatch, {"e": endpoint})
    now, day = 10**9, 86_400.0
    started = ExperimentState("running", now - 14 * day, {"a": 50, "b": 50}, "test")
    monitor.state_store.save_experiment("e", started.to_dict(), 0)
    old = now - 10 * day  # past the 7 days records are kept, inside the experiment
    monitor.store.add_records(
        [PredictionRecord(f"e:{i}", old, "e", "a", "cancer:v1", ["benign"], 0.01) for i in range(3)]
    )
    assert monitor.prune(now=now)["predictions"] == 0
    monitor.state_store.save_experiment(
        "e", {**started.to_dict(), "status": "stopped", "stopped_at": now - 8 * day}, 1
    )
    assert monitor.prune(now=now)["predictions"] == 0  # its readout is not final yet
    monitor.experiments.export(now=now)  # stopped more than its join window (a day) ago
    assert monitor.prune(now=now)["predictions"] == 3


def test_an_arm_answered_by_another_model_while_the_experiment_ran_ends_in_no_ship(
    tmp_path, open_database, demo_models
):
    """An arm is a variant, and a variant's model can change while the experiment runs (a reload
    of gateway.yaml, a restart with it edited): the arm's units then saw two treatments, and the
    readout shipped a lift that belongs to neither model. Pinned requests, a tester's choice, and
    answers before the window do not count."""
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    b_converts_more(experiments)
    before_and_pinned = [
        PredictionRecord("e:old", 999.0, "e", "b", "cancer:v7", ["benign"], 0.01),
        PredictionRecord("e:pin", 1500.0, "e", "b", "cancer:v8", ["benign"], 0.01, pinned=True),
    ]
    experiments.store.add_records(before_and_pinned)
    assert experiments.describe("e", now=2000.0)["verdict"] == "ship"
    swapped = PredictionRecord("e:new", 1500.0, "e", "b", "cancer:v3", ["benign"], 0.01)
    experiments.store.add_records([swapped])
    experiments.export(now=2000.0)
    described = experiments.describe("e", now=2000.0)
    assert described["verdict"] == "no_ship", described["reason"]
    assert "arm b was answered by cancer:v3 and m while it ran" in described["reason"]


@pytest.mark.parametrize(
    "changed, moved_users, verdict",
    [
        (None, False, "ship"),
        ({"a": 100, "b": 100}, False, "ship"),
        ({"a": 45, "b": 55}, False, "no_ship"),
        ({"a": 50, "b": 50}, True, "no_ship"),
    ],
)
def test_routing_that_moved_while_the_experiment_ran_breaks_its_assignment(
    tmp_path, open_database, demo_models, changed, moved_users, verdict
):
    """A change of shares moves users between arms (they keep their bucket, not their arm). A
    small one kept the counts within what the sample-ratio test accepts, and a win shipped
    though the gateway had warned it would not; the same shares in other numbers move no one.
    A change beside the arms may move users between them with their shares kept (a stable
    variant added after them): the gateway records that it did."""
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    change = {"at": 1500.0, "weights": changed, "by": "ops", "moved_users": moved_users}
    changes = [] if changed is None else [change]
    state = ExperimentState("running", 1000.0, {"a": 50, "b": 50}, "test", weight_changes=changes)
    experiments.state_store.save_experiment("e", state.to_dict(), 1)
    b_converts_more(experiments)
    described = experiments.describe("e", now=2000.0)
    assert not described["sample_ratio"]["flagged"]
    assert described["verdict"] == verdict, described["reason"]
    if verdict == "no_ship":
        assert "change by ops at 1970-01-01 00:25:00 UTC moved users" in described["reason"]
        assert f"their weights {changed}" in described["reason"]


def test_a_read_answers_the_newest_readout_at_once_and_has_a_newer_one_computed_when_due(
    tmp_path, open_database, demo_models
):
    """A readout reads its whole window (3.7 s per million requests): computed on every read, a
    long experiment's outlasted the gateway's wait for the monitor. A read now answers the
    newest readout on the experiment's state, renews one older than ``interval_s`` in the
    background, and waits only on a state nothing was computed on yet."""
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    answered(experiments, 150)
    first = experiments.describe("e", now=2000.0)
    assert first["computed_at"] == 2000.0 and first["sample_ratio"]["units"] == {"a": 150, "b": 150}
    more = [PredictionRecord(f"e:c{i}", 1500.0, "e", "a", "m", ["x"], 0.01) for i in range(50)]
    experiments.store.add_records(more)
    assert experiments.describe("e", now=2029.0)["computed_at"] == 2000.0  # within interval_s
    assert experiments.describe("e", now=2030.0)["computed_at"] == 2000.0  # due: renewed behind
    deadline = time.monotonic() + 10
    while (renewed := experiments.describe("e", now=2030.0))["computed_at"] != 2030.0:
        assert time.monotonic() < deadline, "the readout was not renewed"
        time.sleep(0.01)
    assert renewed["sample_ratio"]["units"] == {"a": 200, "b": 150}
    stopped = ExperimentState("stopped", 1000.0, {"a": 50, "b": 50}, "test", stopped_at=2035.0)
    experiments.state_store.save_experiment("e", stopped.to_dict(), 1)
    described = experiments.describe("e", now=2040.0)  # a new state: computed before answering
    assert (described["status"], described["computed_at"]) == ("stopped", 2040.0)


def test_reads_at_once_compute_a_readout_and_renew_it_once(
    tmp_path, open_database, demo_models, monkeypatch
):
    experiments = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    answered(experiments, 150)
    calls = []
    read_out = experiments.read_out

    def slow_read_out(*args):
        calls.append(args)
        time.sleep(0.3)
        return read_out(*args)

    monkeypatch.setattr(experiments, "read_out", slow_read_out)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: experiments.describe("e", now=2000.0), range(4)))
        assert len(calls) == 1
        assert {a["computed_at"] for a in answers} == {2000.0}
        later = list(pool.map(lambda _: experiments.describe("e", now=2030.0), range(4)))
    assert {a["computed_at"] for a in later} == {2000.0}  # at once, renewed behind
    deadline = time.monotonic() + 10
    while experiments.describe("e", now=2030.0)["computed_at"] != 2030.0:
        assert time.monotonic() < deadline, "the readout was not renewed"
        time.sleep(0.01)
    time.sleep(0.5)  # any other renewal started by those reads would have read by now
    assert len(calls) == 2


def test_every_monitor_answers_the_newest_readout_whoever_computed_it(
    tmp_path, open_database, demo_models, monkeypatch
):
    """The newest readout is kept in the shared state store: a standby, or a monitor just
    restarted, answers the leader's at once; it computed the whole window again, which past a
    few million requests outlasted the gateway's wait."""
    leader = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"))
    answered(leader, 150)
    leader.export(now=2000.0)
    standby = readouts(tmp_path, open_database, ("cancer:v1", "cancer:v2"), restart_of=leader)

    def no_computing(*args):
        raise AssertionError("the standby computed the window again")

    monkeypatch.setattr(standby, "read_out", no_computing)
    described = standby.describe("e", now=2010.0)
    assert described["computed_at"] == 2000.0
    assert described["sample_ratio"]["units"] == {"a": 150, "b": 150}
