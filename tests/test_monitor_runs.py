"""Monitor runs without a server: the candidate's predictions are compared with the stable
variant's in the same window."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from monitors.records import PredictionRecord
from monitors.reports import ReportArchive
from monitors.store import MonitorStore
from service import registry
from service.config import MonitorConfig
from service.monitor.metrics import MonitorMetrics
from service.monitor.runs import MonitorRunner

ROLES = {("cancer", "stable"): "stable", ("cancer", "candidate"): "candidate"}


def runner_with(tmp_path, demo_models, candidate_predicts, attribution_rows=0) -> MonitorRunner:
    rows = pd.read_csv(demo_models["cancer:v1"].reference_path)
    features = rows.drop(columns=["label"]).to_numpy().tolist()
    labels = rows["label"].tolist()
    store = MonitorStore.open_sqlite(tmp_path / "monitor.sqlite3")
    records = []
    for i, (x, y) in enumerate(zip(features, labels)):
        records.append(
            PredictionRecord(
                f"s{i}", 1000.0 + i, "cancer", "stable", "cancer:v1", [y], 0.001, inputs=[x]
            )
        )
        records.append(
            PredictionRecord(
                f"c{i}",
                1000.0 + i,
                "cancer",
                "candidate",
                "cancer:v2",
                [candidate_predicts(y)],
                0.001,
                inputs=[x],
            )
        )
    store.add_records(records)
    config = MonitorConfig(min_rows=100, window_s=10**9, attribution_rows=attribution_rows)
    return MonitorRunner(
        config,
        store,
        MonitorMetrics(CollectorRegistry()),
        ReportArchive(tmp_path / "r"),
        lambda: ROLES,
    )


def record_one(runner: MonitorRunner, variant: str, request_id: str) -> None:
    """Store one more record of ``variant``: a copy of a stored one's inputs, answered
    "benign"."""
    (inputs,) = runner.store.db.query(
        "SELECT inputs FROM predictions WHERE variant = ? LIMIT 1", (variant,)
    )[0]
    model = {"stable": "cancer:v1", "candidate": "cancer:v2"}[variant]
    record = PredictionRecord(
        request_id, 1999.0, "cancer", variant, model, ["benign"], 0.001, inputs=json.loads(inputs)
    )
    runner.store.add_records([record])


def test_a_candidate_answering_one_class_diverges_from_stable(demo_models, tmp_path):
    runner = runner_with(tmp_path, demo_models, lambda y: "benign")
    reports = {r.variant: r for r in runner.run_once(now=2000.0)}
    assert reports["stable"].vs_stable is None
    assert reports["candidate"].vs_stable.drifted and reports["candidate"].vs_stable.score > 0.2


def test_a_candidate_that_agrees_does_not_diverge(demo_models, tmp_path):
    runner = runner_with(tmp_path, demo_models, lambda y: y)
    candidate = {r.variant: r for r in runner.run_once(now=2000.0)}["candidate"]
    assert not candidate.vs_stable.drifted and candidate.vs_stable.score < 0.01
    assert candidate.to_dict()["vs_stable"]["method"] == "jensenshannon_beyond_noise"


def test_each_variants_reasons_are_measured_against_its_reference_and_stables(
    demo_models, tmp_path
):
    """Attribution drift: mean |SHAP| per feature on a sample of the window against the same on
    the reference, exported; the candidate (an MLP) against stable (a logistic regression)."""
    runner = runner_with(tmp_path, demo_models, lambda y: y, attribution_rows=32)
    reports = {r.variant: r for r in runner.run_once(now=2000.0)}
    stable, candidate = reports["stable"], reports["candidate"]
    features = set(runner._reference("cancer:v1").card.feature_names)
    assert set(stable.attribution.window) == features and stable.attribution.rows == 32
    assert stable.attribution.shift < 0.05  # the stable window is its own reference's rows
    reference = runner._reference("cancer:v1")
    frame = reference.frame
    moved = frame.assign(mean_radius=frame.mean_radius * 1.5, worst_texture=0.0)
    assert runner._attribution(reference, moved).shift > 0.1  # the demo's drift moves its reasons
    assert stable.attribution_vs_stable is None
    apart = candidate.attribution_vs_stable  # an MLP's reasons against a logistic regression's
    assert 0 < apart.distance <= 1  # 0.11, as far as noise takes two 32-row samples
    registry = runner.metrics.registry
    shift = registry.get_sample_value(
        "gateway_attribution_shift_score", {"endpoint": "cancer", "variant": "stable"}
    )
    assert shift == stable.attribution.shift
    divergence = registry.get_sample_value(
        "gateway_attribution_divergence_from_stable_score",
        {"endpoint": "cancer", "variant": "candidate"},
    )
    assert divergence == apart.distance


def test_rows_with_values_that_are_not_finite_are_left_out_of_the_reasons(demo_models, tmp_path):
    """A model that takes non-finite inputs answers NaN for some (here +inf and -inf together):
    one such row in the sample made every feature's mean |SHAP| NaN, the shift never seen."""
    runner = runner_with(tmp_path, demo_models, lambda y: y, attribution_rows=32)
    reference = runner._reference("cancer:v1")
    frame = reference.frame
    infinite = frame.index % 4 == 0
    window = frame.assign(
        mean_radius=frame.mean_radius.where(~infinite, np.inf),
        mean_texture=frame.mean_texture.where(~infinite, -np.inf),
    )
    attribution = runner._attribution(reference, window)
    assert attribution.rows == 32 and np.isfinite(list(attribution.window.values())).all()
    assert 0 <= attribution.shift < 0.2  # a number: other rows of the reference, noise alone


def test_attribution_is_computed_every_attribution_interval_or_when_asked(
    demo_models, tmp_path, monkeypatch
):
    """SHAP on window rows is most of a run's CPU: runs in between keep the last one, and so
    does a variant with nothing new since an analysis that computed it."""
    runner = runner_with(tmp_path, demo_models, lambda y: y, attribution_rows=8)
    computed = []
    explained = runner._explained
    monkeypatch.setattr(runner, "_explained", lambda *a: computed.append(1) or explained(*a))
    interval = runner.config.attribution_interval_s

    def attribution(**run) -> object:
        return {r.variant: r for r in runner.run_once(**run)}["stable"].attribution

    first = attribution(now=2000.0)
    assert first is not None and computed  # the first run computes it (and the reference's)
    computed.clear()
    record_one(runner, "stable", "new-1")
    assert attribution(now=2000.0 + interval / 2) is first and not computed
    asked = attribution(now=2000.0 + interval / 2, fresh=True)
    assert asked is not first and computed  # the one kept was from an older window
    computed.clear()
    assert attribution(now=2000.0 + interval / 2, fresh=True) is asked and not computed
    record_one(runner, "stable", "new-2")
    third = attribution(now=2000.0 + interval * 2)
    assert third is not asked and computed
    computed.clear()
    record_one(runner, "stable", "new-3")  # analysed again in between, the attribution kept
    assert attribution(now=2000.0 + interval * 2.5) is third and not computed
    # nothing new since, but the attribution is from an older window: computed at the interval
    fourth = attribution(now=2000.0 + interval * 3.5)
    assert fourth is not third and computed
    computed.clear()
    assert attribution(now=2000.0 + interval * 5) is fourth and not computed


def test_reports_are_saved_when_asked_or_an_interval_after_the_first_run(
    demo_models, tmp_path, monkeypatch
):
    """A monitor that starts (or takes over) does not begin with every variant's reports, and
    does not save again, when they are due, the reports of a variant with nothing new."""
    runner = runner_with(tmp_path, demo_models, lambda y: y)
    saved = []
    monkeypatch.setattr(runner, "_save", lambda report: saved.append(report.variant))
    interval = runner.config.report_interval_s
    runner.run_once(now=2000.0)
    assert saved == []
    runner.run_once(now=2000.0 + interval / 2, save_reports=True)
    assert sorted(saved) == ["candidate", "stable"]
    saved.clear()
    runner.run_once(now=2000.0 + interval)
    assert saved == []  # the save asked for restarted the clock
    record_one(runner, "candidate", "new")
    runner.run_once(now=2000.0 + interval * 1.5)
    assert saved == ["candidate"]  # the stable variant's are saved as they are
    runner.run_once(now=2000.0 + interval * 3)
    assert saved == ["candidate"]
    runner.run_once(now=2000.0 + interval * 3, save_reports=True)  # asked for: all of them
    assert sorted(saved) == ["candidate", "candidate", "stable"]


def test_without_recorded_inputs_there_is_no_attribution_and_no_failure(demo_models, tmp_path):
    store = MonitorStore.open_sqlite(tmp_path / "monitor.sqlite3")
    store.add_records(
        PredictionRecord(f"s{i}", 1000.0 + i, "cancer", "stable", "cancer:v1", ["benign"], 0.001)
        for i in range(300)
    )
    metrics = MonitorMetrics(CollectorRegistry())
    runner = MonitorRunner(
        MonitorConfig(min_rows=100, window_s=10**9), store, metrics, ReportArchive(tmp_path / "r")
    )
    [report] = runner.run_once(now=2000.0)
    assert report.attribution is None and report.drift.status == "insufficient_data"
    failures = metrics.registry.get_sample_value(
        "gateway_monitor_analysis_failures_total", {"endpoint": "cancer", "variant": "stable"}
    )
    assert not failures


def test_a_variant_that_became_stable_loses_its_divergence_from_stable(demo_models, tmp_path):
    """After a promotion the old candidate is the stable variant: its "from stable" series go,
    instead of showing its last value as if it were still compared."""
    runner = runner_with(tmp_path, demo_models, lambda y: "benign")
    runner.run_once(now=2000.0)
    series = {"endpoint": "cancer", "variant": "candidate"}
    registry = runner.metrics.registry
    name = "gateway_prediction_divergence_from_stable_score"
    assert registry.get_sample_value(name, series) > 0.2
    runner.roles = lambda: {("cancer", "candidate"): "stable", ("cancer", "stable"): "candidate"}
    runner.run_once(now=2001.0)
    assert registry.get_sample_value(name, series) is None
    assert registry.get_sample_value(name, {"endpoint": "cancer", "variant": "stable"}) > 0.2


def test_quality_follows_new_labels_and_is_not_computed_again_without_them(demo_models, tmp_path):
    """Runs reuse a variant's quality while its labeled rows are the same (QualityMemo), and a
    label that arrives in between is in the next run's figures."""
    runner = runner_with(tmp_path, demo_models, lambda y: "benign")
    store, ids = runner.store, [f"c{i}" for i in range(200)]  # the candidate's records
    store.add_labels([(request_id, "benign") for request_id in ids[:150]])

    def quality():
        return {r.variant: r for r in runner.run_once(now=2000.0)}["candidate"].quality

    first = quality()
    assert first.status == "ok" and first.rows == 150 and first.metrics["accuracy"] == 1.0
    assert quality() is first  # nothing new: the same result, not computed again
    store.add_labels([(request_id, "malignant") for request_id in ids[150:200]])
    second = quality()
    assert second.rows == 200 and second.metrics["accuracy"] == pytest.approx(150 / 200)
    metrics = runner.metrics.registry
    series = {"endpoint": "cancer", "variant": "candidate", "metric": "accuracy"}
    assert metrics.get_sample_value("gateway_model_quality", series) == pytest.approx(0.75)


def test_a_variant_is_analysed_again_only_when_what_it_reads_changed(demo_models, tmp_path):
    runner = runner_with(tmp_path, demo_models, lambda y: y)
    first = {r.variant: r for r in runner.run_once(now=2000.0)}
    again = {r.variant: r for r in runner.run_once(now=2001.0)}
    assert all(again[v].drift is first[v].drift for v in first)  # kept, not computed again
    record_one(runner, "candidate", "new")
    third = {r.variant: r for r in runner.run_once(now=2002.0)}
    assert third["stable"].drift is first["stable"].drift
    assert third["candidate"].drift is not first["candidate"].drift
    assert third["candidate"].drift.rows == first["candidate"].drift.rows + 1
    assert third["candidate"].vs_stable is not None  # compared with stable every run


def test_a_variant_that_changed_model_keeps_each_models_analysis(demo_models, tmp_path):
    runner = runner_with(tmp_path, demo_models, lambda y: y)
    (inputs,) = runner.store.db.query("SELECT inputs FROM predictions LIMIT 1")[0]
    runner.store.add_records(
        [PredictionRecord("v2", 1999.0, "cancer", "stable", "cancer:v2", ["benign"], 0.001,
                          inputs=json.loads(inputs))]
    )  # fmt: skip

    def stable() -> dict:
        reports = runner.run_once(now=2000.0)
        return {r.model: r.drift for r in reports if r.variant == "stable"}

    first = stable()
    assert set(first) == {"cancer:v1", "cancer:v2"}
    again = stable()
    assert all(again[model] is first[model] for model in first)


def test_an_operators_run_beside_a_periodic_one_breaks_neither(demo_models, tmp_path, monkeypatch):
    """``POST /runs`` calls ``run_once`` on a thread of its own while the periodic run may be
    anywhere in its own: here, between saving one variant's due reports and the next's, a run late
    enough that no variant is active any more."""
    runner = runner_with(tmp_path, demo_models, lambda y: y)
    saved = []

    def save(report) -> None:
        saved.append(report.variant)
        if len(saved) == 1:
            assert runner.run_once(now=10.0**10, save_reports=True) == []

    monkeypatch.setattr(runner, "_save", save)
    runner.run_once(now=2000.0)
    reports = runner.run_once(now=2000.0 + runner.config.report_interval_s)  # reports due
    assert sorted(saved) == sorted(r.variant for r in reports) == ["candidate", "stable"]
    failures = runner.metrics.registry.get_sample_value(
        "gateway_monitor_analysis_failures_total", {"endpoint": "cancer", "variant": "stable"}
    )
    assert not failures


def test_a_reference_too_small_for_drift_is_logged_once(demo_models, tmp_path, monkeypatch, caplog):
    registered = registry.load_reference
    small = registered("cancer:v1").head(40)
    monkeypatch.setattr(
        registry, "load_reference", lambda tag: small if tag == "cancer:v1" else registered(tag)
    )
    runner = runner_with(tmp_path, demo_models, lambda y: y)
    with caplog.at_level(logging.WARNING, logger="gateway.monitor"):
        first = {r.variant: r for r in runner.run_once(now=2000.0)}
        record_one(runner, "stable", "one-more")
        runner.run_once(now=2001.0)
    assert first["stable"].drift.status == "insufficient_data"
    assert first["candidate"].drift.status == "ok"
    said = [r.getMessage() for r in caplog.records if "reference rows" in r.getMessage()]
    assert said == [
        "cancer:v1 has 40 reference rows, fewer than the 100 drift needs: its drift is never "
        "computed (register it with more)"
    ]
