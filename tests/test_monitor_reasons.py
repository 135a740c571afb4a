"""The rollout's verdicts on the candidate's reasons: drawn from each arm's first units in the
step, explained with the real demo models, made at most every interval and only on new units; and
its input drift, judged on the same units against the real reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from monitors.records import PredictionRecord
from monitors.reports import ReportArchive
from monitors.store import MonitorStore
from service.config import MonitorConfig, RolloutConfig
from service.monitor.evidence import EvidenceGatherer
from service.monitor.metrics import MonitorMetrics
from service.monitor.reasons import StepReasons
from service.monitor.runs import MonitorRunner
from tests.helpers import monitor_in_process
from traffic.rollout import start, windows
from traffic.rollout_checks import Divergence, Evidence, check_comparison, comparison_alpha

STARTED = 10_000.0
POLICY = RolloutConfig(
    candidate="candidate",
    steps=[{"weight": 50}],
    comparisons=[{"metric": "attribution_divergence", "margin": 0.15}],
).policy("cancer", "stable", 100.0)
ROLES = {("cancer", "stable"): "stable", ("cancer", "candidate"): "candidate"}


def parts(tmp_path, demo_models, attribution_rows: int = 32):
    """A store, the monitor's runner over it (its own attribution, for the dashboards), and the
    rollout's verdicts explained as the runner explains."""
    store = MonitorStore.open_sqlite(tmp_path / "monitor.sqlite3")
    config = MonitorConfig(min_rows=100, window_s=10**9, attribution_rows=attribution_rows)
    runner = MonitorRunner(
        config,
        store,
        MonitorMetrics(CollectorRegistry()),
        ReportArchive(tmp_path / "r"),
        lambda: ROLES,
    )
    reasons = StepReasons(store, runner.explained, attribution_rows, config.min_rows, 300.0)
    return store, runner, reasons


def reference_rows(demo_models) -> tuple[list, list]:
    rows = pd.read_csv(demo_models["cancer:v1"].reference_path)
    return rows.drop(columns=["label"]).to_numpy().tolist(), rows["label"].tolist()


def answered(variant, rows, answers, first_at, pinned=False, unit=None, model="cancer:v1"):
    return [
        PredictionRecord(
            f"cancer:{variant}{first_at}:{i}",
            first_at + i * 0.01,
            "cancer",
            variant,
            model,  # by default both arms': a candidate with stable's reasons
            [answer],
            0.01,
            inputs=[row],
            pinned=pinned,
            unit=f"{variant}{first_at:09.0f}{i:022x}" if unit is None else unit,
        )
        for i, (row, answer) in enumerate(zip(rows, answers))
    ]


def test_reasons_are_compared_on_each_arms_unpinned_units_in_the_step(demo_models, tmp_path):
    """attribution_divergence read the monitor's distance, which samples each variant's newest
    rows: a tester's requests pinned to the candidate, all with one unusual input, made most of
    its sample, and a candidate with stable's very model was judged to reason otherwise, far
    beyond noise. The rollout's verdict now draws from each arm's unpinned first units."""
    store, runner, reasons = parts(tmp_path, demo_models)
    features, labels = reference_rows(demo_models)
    order = np.random.default_rng(1).permutation(len(features))
    half = len(order) // 2
    for variant, chosen in (("stable", order[:half]), ("candidate", order[half:])):
        store.add_records(
            answered(variant, [features[i] for i in chosen], [labels[i] for i in chosen], STARTED)
        )
    unusual = features[int(order[0])]
    store.add_records(
        answered("candidate", [unusual] * 300, [labels[int(order[0])]] * 300, STARTED + 30, True)
    )
    state = start(POLICY, "cancer:v1", STARTED).state
    now = STARTED + 60
    alpha = comparison_alpha(POLICY, windows(POLICY, state, now))
    newest = {r.variant: r for r in runner.run_once(now=now)}["candidate"]
    before = newest.attribution_vs_stable  # the monitor's distance, on the dashboards
    read_before = Evidence(attribution_divergence=Divergence(before.distance, 0, before.p_value))
    assert check_comparison(POLICY.comparisons[0], read_before, alpha).outcome == "FAIL"
    reasons.compare(POLICY, state, now)
    evidence = EvidenceGatherer(store, runner.settings, reasons).gather(POLICY, state, now)
    assert evidence.attribution_divergence == reasons.latest(POLICY, state)
    result = check_comparison(POLICY.comparisons[0], evidence, alpha)
    assert result.outcome == "PASS", result.reason


def test_a_verdict_is_made_at_most_every_interval_on_new_units_and_read_in_its_step(
    demo_models, tmp_path
):
    store, _, reasons = parts(tmp_path, demo_models, attribution_rows=8)
    features, labels = reference_rows(demo_models)
    state = start(POLICY, "cancer:v1", STARTED).state
    reasons.compare(POLICY, state, STARTED + 1)
    assert reasons.latest(POLICY, state) is None  # no units yet
    for variant in ("stable", "candidate"):
        store.add_records(answered(variant, features[:20], labels[:20], STARTED + 2))
    reasons.compare(POLICY, state, STARTED + 3)
    first = reasons.latest(POLICY, state)
    assert first is not None and 0 <= first.distance <= 1
    store.add_records(answered("stable", features[20:40], labels[20:40], STARTED + 5))
    reasons.compare(POLICY, state, STARTED + 100)  # not due: the last verdict is 97 s old
    assert reasons.latest(POLICY, state) is first
    reasons.compare(POLICY, state, STARTED + 400)  # due, and stable's units grew
    second = reasons.latest(POLICY, state)
    assert second is not None and second is not first
    reasons.compare(POLICY, state, STARTED + 800)  # due, but the same units: the same verdict
    assert reasons.latest(POLICY, state) is second
    paused = replace(state, phase="paused", resume_phase="progressing")
    assert reasons.latest(POLICY, paused) is second  # read in its step, whatever the phase
    next_step = replace(state, step=0, step_started=STARTED + 1300)
    assert reasons.latest(POLICY, next_step) is None  # not of this step
    unasked = replace(POLICY, comparisons=())
    reasons.compare(unasked, next_step, STARTED + 1400)
    assert reasons.latest(POLICY, next_step) is None  # the policy compares no reasons


def test_the_monitor_makes_verdicts_for_its_rollouts_and_they_read_them(
    tmp_path, demo_models, monkeypatch
):
    """The wiring: the monitor's analysis job asks for verdicts, the rollout's evidence reads the
    one of its step, and the rollout counts it as a verdict read."""
    endpoint = {
        "variants": [
            {"name": "stable", "model": "cancer:v1"},
            {"name": "candidate", "model": "cancer:v2", "role": "candidate", "weight": 0},
        ],
        "rollout": {
            "candidate": "candidate",
            "steps": [{"weight": 50}],
            "comparisons": [{"metric": "attribution_divergence", "margin": 0.9}],
            "offline_gate": {"enabled": False},
        },
    }
    monitor = monitor_in_process(tmp_path, monkeypatch, {"cancer": endpoint})
    monitor.rollouts.tick("cancer", now=STARTED)  # starts the rollout
    features, labels = reference_rows(demo_models)
    for variant, model in (("stable", "cancer:v1"), ("candidate", "cancer:v2")):
        records = answered(variant, features[:40], labels[:40], STARTED + 1, model=model)
        monitor.store.add_records(records)
    monitor.rollouts.compare_reasons(now=STARTED + 10)
    decision = monitor.rollouts.tick("cancer", now=STARTED + 20)
    assert decision.state.verdicts_read["attribution_divergence"][0] == 1
    (compared,) = [c for c in decision.checks if c.name == "attribution_divergence"]
    assert compared.outcome == "PASS", compared.reason  # within 0.9


def test_input_drift_is_judged_on_the_candidates_unpinned_units_in_the_step(demo_models, tmp_path):
    """input_drift read the monitor's verdict, of the candidate's newest rows: a tester's
    requests pinned to it with inputs unlike the reference drifted its traffic by themselves,
    and the rollout failed a candidate whose users sent what stable's send. It is judged on the
    candidate's first units in the step, unpinned, as the other comparisons read the step."""
    policy = RolloutConfig(
        candidate="candidate",
        steps=[{"weight": 50}],
        comparisons=[{"metric": "input_drift", "margin": 0.3}],
    ).policy("cancer", "stable", 100.0)
    store, runner, _ = parts(tmp_path, demo_models)
    features, labels = reference_rows(demo_models)
    order = np.random.default_rng(2).permutation(len(features))
    for variant, chosen in (("stable", order[:150]), ("candidate", order[150:])):
        rows, answers = [features[i] for i in chosen], [labels[i] for i in chosen]
        store.add_records(answered(variant, rows, answers, STARTED))
    unlike = [[value * 1.5 for value in features[i]] for i in order[:300]]
    store.add_records(answered("candidate", unlike, labels[:300], STARTED + 30, pinned=True))
    state = start(policy, "cancer:v1", STARTED).state
    now = STARTED + 60
    alpha = comparison_alpha(policy, windows(policy, state, now))
    newest = {r.variant: r for r in runner.run_once(now=now)}["candidate"]
    read_before = Evidence(drifted_share=newest.drift.drifted_share)  # the monitor's verdict
    assert check_comparison(policy.comparisons[0], read_before, alpha).outcome == "FAIL"
    gatherer = EvidenceGatherer(store, runner.settings, input_drift=runner.input_drift)
    evidence = gatherer.gather(policy, state, now)
    assert evidence.drifted_share is not None and evidence.drifted_share < 0.1
    assert check_comparison(policy.comparisons[0], evidence, alpha).outcome == "PASS"
