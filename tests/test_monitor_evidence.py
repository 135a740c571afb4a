"""The evidence a rollout is judged on, gathered from a real monitor store: the latency_ratio
guardrail's threshold is an upper confidence bound for stable's median in the same window, so a
handful of stable answers (requests still in flight when a candidate was promoted) sets none, and
a slower candidate judged against them is not rolled back on their say."""

from __future__ import annotations

import numpy as np

from monitors.records import PredictionRecord
from monitors.store import MonitorStore
from service.config import RolloutConfig
from service.monitor.evidence import EvidenceGatherer
from traffic.rollout import start, windows
from traffic.rollout_checks import check_guardrail, guardrail_alphas, latency_threshold_rank

POLICY = RolloutConfig(candidate="next", steps=[{"weight": 50}]).policy("churn", "stable", 100.0)
LATENCY = next(g for g in POLICY.guardrails if g.metric == "latency_ratio")
STARTED = 1000.0


def answers(variant: str, latencies_s, first_at: float) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            f"{variant}:{first_at}:{i}",
            first_at + i * 0.01,
            "churn",
            variant,
            f"churn:{variant}",
            ["yes"],
            float(latency),
        )
        for i, latency in enumerate(latencies_s)
    ]


def judged(store: MonitorStore, now: float):
    state = start(POLICY, "churn:v2", STARTED).state
    evidence = EvidenceGatherer(store, dict).gather(POLICY, state, now, regression=False)
    alphas = guardrail_alphas(POLICY, windows(POLICY, state, now))
    result, _ = check_guardrail(LATENCY, evidence, alphas, ())
    return evidence.stage, result, alphas


def test_a_handful_of_stable_answers_sets_no_latency_threshold(open_database):
    store = MonitorStore(open_database())
    store.add_records(answers("stable", [0.001] * 5, STARTED + 1))
    store.add_records(answers("next", [0.002] * 300, STARTED + 1))  # 2x those five
    stage, result, _ = judged(store, STARTED + 10)
    assert stage.stable.requests == 5 and stage.threshold_ms is None
    assert result.outcome == "INSUFFICIENT" and "too few stable answers" in result.reason


def test_the_threshold_is_a_bound_above_stable_median_and_judges_the_candidate(open_database):
    rng = np.random.default_rng(3)
    store = MonitorStore(open_database())
    stable = rng.lognormal(np.log(0.010), 0.5, 400)
    store.add_records(answers("stable", stable, STARTED + 1))
    store.add_records(answers("next", rng.lognormal(np.log(0.030), 0.5, 400), STARTED + 1))
    stage, result, alphas = judged(store, STARTED + 10)
    rank = latency_threshold_rank(LATENCY, 400, alphas[0])
    assert 200 < rank < 300
    assert stage.threshold_ms == np.sort(stable)[rank - 1] * 1.5 * 1000
    assert stage.threshold_ms > np.median(stable) * 1.5 * 1000
    assert result.outcome == "FAIL"  # 3x slower is still caught at once
