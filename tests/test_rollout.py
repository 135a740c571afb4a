"""The rollout controller without a server: the simulation harness feeds it synthetic evidence.

With the configuration's DEFAULT guardrails and comparisons (what users get): healthy candidates
are not rolled back more often than alpha under heavy latency tails, slow modes, shared bursts of
errors and of slowness, low traffic, label lag and long pauses; broken ones are rolled back within the stated
bounds; a less accurate one is never promoted; too little traffic holds and never fails; operators'
actions and dry runs behave."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from service.config import RolloutConfig
from traffic.rollout import (
    RolloutError,
    RolloutState,
    Target,
    act,
    evaluate,
    set_by_hand,
    start,
    targets,
    windows,
)
from traffic.rollout_checks import (
    ArmCounts,
    Divergence,
    Evidence,
    Window,
    check_comparison,
    comparison_alpha,
)
from traffic.rollout_policy import Comparison, Step
from traffic.simulation import ArmModel, Bursts, simulate

DEFAULT = RolloutConfig(
    candidate="candidate",
    steps=[{"weight": w, "min_duration_s": 300} for w in (5, 25, 50)],
).policy("cancer", "stable", slo_ms=100.0)
"""The defaults users get, on the steps the issue names: 5/25/50% for 300 s, interval 10 s."""
HEALTHY = ArmModel(error_rate=0.005, median_latency_ms=20)
PARETO = ArmModel(error_rate=0.005, latency=lambda rng, n: 10.0 * (1 + rng.pareto(1.5, n)))
SLOW_MODE = ArmModel(error_rate=0.005, latency_sigma=1.0, slow_share=0.02)


def _rolled_back(runs) -> int:
    return sum(r.phase == "rolled_back" for r in runs)


@pytest.mark.parametrize(
    ("requests_per_s", "arm", "scenario"),
    [
        (5, SLOW_MODE, {}),
        (5, PARETO, {"pauses": ((300, 3000),)}),
        (50, SLOW_MODE, {"bursts": Bursts(600, 30, 0.3), "label_lag_s": 60}),
        (50, PARETO, {"pauses": ((100, 3000),)}),
        (500, SLOW_MODE, {"bursts": Bursts(300, 20, 0.5)}),
        (500, PARETO, {}),
        (50, SLOW_MODE, {"bursts": Bursts(900, 300, 0.005, latency_factor=3)}),
        (500, PARETO, {"bursts": Bursts(600, 120, 0.005, latency_factor=4)}),
    ],
    ids=[
        "5-slow-mode",
        "5-pareto-paused",
        "50-bursts",
        "50-pareto-paused",
        "500-bursts",
        "500-pareto",
        "50-slowdowns",
        "500-pareto-slowdowns",
    ],
)
def test_a_a_false_rollbacks_stay_under_alpha(requests_per_s, arm, scenario):
    runs = [
        simulate(DEFAULT, arm, arm, requests_per_s, 0.3, max_s=3600, seed=seed, **scenario)
        for seed in range(12)
    ]
    phases = Counter(r.phase for r in runs)
    print(f"A/A at {requests_per_s} req/s: {dict(phases)}")
    assert _rolled_back(runs) / len(runs) <= DEFAULT.alpha


def test_healthy_candidates_get_through_where_traffic_allows():
    runs = [simulate(DEFAULT, HEALTHY, HEALTHY, 500, 0.3, seed=seed) for seed in range(8)]
    assert sum(r.phase == "succeeded" for r in runs) >= 6 and _rolled_back(runs) == 0


def test_budget_spending_adds_up_to_alpha():
    from traffic.rollout_checks import kth_share, offline_gate_alpha, stage_share

    for stages in (1, 2, 3, 6):
        assert sum(stage_share(k, stages) for k in range(1, stages + 1)) == pytest.approx(1.0)
    assert sum(kth_share(k) for k in range(1, 100_000)) < 1.0
    steps = len(DEFAULT.steps)  # each comparison's budget over its steps, the gate's, the guards'
    each = comparison_alpha(DEFAULT, windows(DEFAULT, _state(), 0.0)) / stage_share(1, steps)
    spent = each * len(DEFAULT.comparisons) + offline_gate_alpha(DEFAULT) + DEFAULT.guardrail_alpha
    assert spent == pytest.approx(DEFAULT.alpha)


def evaluations_to_rollback(candidate: ArmModel, requests_per_s: float, seeds: int = 30) -> list:
    ends = []
    for seed in range(seeds):
        result = simulate(DEFAULT, HEALTHY, candidate, requests_per_s, seed=seed, max_s=1200)
        assert result.phase == "rolled_back", result.decisions[-1][1].reason
        ends.append(result.evaluations_to_end)
    return ends


def test_gross_failures_are_rolled_back_within_a_handful_of_requests():
    for candidate in (ArmModel(error_rate=1.0), ArmModel(error_rate=0.005, invalid_rate=1.0)):
        assert max(evaluations_to_rollback(candidate, 50)) == 1  # ~25 candidate requests
    # at 5 req/s the candidate gets 2.5 requests per evaluation: still a handful
    assert np.quantile(evaluations_to_rollback(ArmModel(error_rate=1.0), 5), 0.9) <= 3


def test_a_candidate_with_20_percent_errors_is_rolled_back_within_two_evaluations():
    ends = evaluations_to_rollback(ArmModel(error_rate=0.2), 50)
    assert np.median(ends) <= 1 and np.quantile(ends, 0.9) <= 2 and max(ends) <= 3, ends
    slow_traffic = evaluations_to_rollback(ArmModel(error_rate=0.2), 5, seeds=15)
    assert np.quantile(slow_traffic, 0.9) <= 20, slow_traffic  # 200 s: ~50 candidate requests


def test_a_candidate_three_times_slower_is_rolled_back_within_three_evaluations():
    ends = evaluations_to_rollback(ArmModel(error_rate=0.005, median_latency_ms=60), 50)
    assert max(ends) <= 3, ends
    slow_traffic = evaluations_to_rollback(ArmModel(error_rate=0.005, median_latency_ms=60), 5)
    assert np.quantile(slow_traffic, 0.9) <= 20, slow_traffic


def test_a_candidate_5_points_less_accurate_is_never_promoted():
    phases = Counter()
    for seed in range(6):
        result = simulate(DEFAULT, HEALTHY, replace(HEALTHY, accuracy=0.85), 500, 0.5, seed=seed)
        assert all(d.action != "promote" for _, d in result.decisions)
        if result.phase == "rolled_back":
            assert "accuracy" in result.decisions[-1][1].reason
        phases[result.phase] += 1
    assert phases["rolled_back"] >= 3 and set(phases) <= {"rolled_back", "paused"}, phases


def test_too_little_traffic_holds_never_fails_and_then_pauses():
    result = simulate(DEFAULT, HEALTHY, HEALTHY, 0.5, 0.5, seed=1, max_s=550)
    assert result.phase == "progressing"
    assert all(d.action == "hold" for _, d in result.decisions[1:])
    checks = [c for _, d in result.decisions[1:] for c in d.checks]
    assert checks and all(c.outcome != "FAIL" for c in checks)
    paused = simulate(DEFAULT, HEALTHY, HEALTHY, 0.5, 0.5, seed=1, max_s=700)
    assert paused.phase == "paused" and "insufficient data" in paused.decisions[-1][1].reason


def test_a_good_candidate_walks_the_steps_then_is_promoted_and_succeeds():
    result = simulate(DEFAULT, HEALTHY, HEALTHY, 2000, 0.5, seed=3)
    actions = [d.action for _, d in result.decisions if d.action != "hold"]
    assert actions == ["start", "advance", "advance", "promote", "succeed"]
    weights = [d.targets["candidate"].weight for _, d in result.decisions if d.targets]
    assert weights[:3] == [5, 25, 50]
    assert result.decisions[-1][1].targets["candidate"].role == "stable"


def test_a_candidate_that_breaks_late_in_a_long_pause_is_still_caught():
    broken_at = 2000.0
    breaking = _breaking_arm(broken_at)
    result = simulate(DEFAULT, HEALTHY, breaking, 50, seed=4, max_s=4000, pauses=((30, 5000),))
    assert result.phase == "rolled_back"
    assert broken_at < result.ended_at <= broken_at + DEFAULT.guard_window_s


def _breaking_arm(at_s: float) -> ArmModel:
    """A candidate whose answers turn 3x slower at ``at_s`` (the simulator's clock)."""
    clock = {"t": 0.0}

    def latency(rng, n):
        clock["t"] += DEFAULT.interval_s  # called once per tick, for the candidate's answers
        median = 60.0 if clock["t"] > at_s else 20.0
        return rng.lognormal(np.log(median), 0.5, size=n)

    return ArmModel(error_rate=0.005, latency=latency)


def test_a_shadow_step_judges_agreement_and_a_gate_waits_for_approval():
    policy = replace(
        DEFAULT,
        steps=(Step(0, 30, shadow=True, gate=True), Step(50, 30)),
        comparisons=(*DEFAULT.comparisons, Comparison("shadow_agreement", 0.05, 200)),
    )
    waiting = simulate(policy, HEALTHY, HEALTHY, 500, 0.5, seed=2, max_s=300)
    assert waiting.decisions[0][1].targets["candidate"].role == "shadow"
    assert waiting.phase == "awaiting_approval"
    approved = act(policy, waiting.decisions[-1][1].state, "approve", 300.0)
    assert approved.state.step == 1 and approved.targets["candidate"].weight == 50
    disagreeing = simulate(policy, HEALTHY, replace(HEALTHY, agreement=0.8), 500, seed=2, max_s=300)
    assert disagreeing.phase == "rolled_back"
    assert "shadow_agreement" in disagreeing.decisions[-1][1].reason


def _state() -> RolloutState:
    return start(DEFAULT, "cancer:v2", 0.0).state


def test_operators_pause_resume_promote_and_roll_back():
    state = _state()
    paused = act(DEFAULT, state, "pause", 5.0)
    assert paused.state.phase == "paused"
    with pytest.raises(RolloutError):
        act(DEFAULT, paused.state, "approve", 6.0)
    resumed = act(DEFAULT, paused.state, "resume", 7.0)
    assert resumed.state.phase == "progressing" and resumed.targets["candidate"].weight == 5
    promoted = act(DEFAULT, resumed.state, "promote", 8.0)
    assert set(promoted.targets) == {"candidate", "stable"}
    assert promoted.targets["candidate"].role == "stable"
    reverted = act(DEFAULT, promoted.state, "rollback", 9.0)
    assert reverted.state.phase == "rolled_back" and reverted.targets["stable"].weight == 100
    with pytest.raises(RolloutError):
        act(DEFAULT, reverted.state, "resume", 10.0)


def test_traffic_set_by_hand_pauses_the_rollout_until_an_operator_resumes_it():
    """The rollout's next step would set its weights again over an operator's (the candidate
    turned off while the monitor was out of reach, a reload of the endpoint edited): it pauses, says
    what it found, and sets its own traffic again only when resumed."""
    state = _state()
    assert set_by_hand(DEFAULT, state, targets(DEFAULT, state)) is None  # as it left it
    turned_off = {"candidate": Target("candidate", 0.0), "stable": Target("stable", 100.0)}
    paused = set_by_hand(DEFAULT, state, turned_off)
    assert paused.action == "pause" and paused.cause == "operator" and paused.targets is None
    assert paused.state.phase == "paused" and paused.state.resumes_as == "progressing"
    assert "candidate candidate at 0%" in paused.reason and "candidate at 5%" in paused.reason
    assert set_by_hand(DEFAULT, paused.state, turned_off) is None  # paused: its own call now
    resumed = act(DEFAULT, paused.state, "resume", 7.0)
    assert resumed.targets["candidate"].weight == 5
    assert set_by_hand(replace(DEFAULT, dry_run=True), state, turned_off) is None


BROKEN = Evidence(
    stage=Window(candidate=ArmCounts(requests=100, errors=90), stable=ArmCounts(requests=900))
)


def test_guardrails_still_apply_while_paused_and_after_promotion():
    paused = act(DEFAULT, _state(), "pause", 1.0).state
    assert evaluate(DEFAULT, paused, BROKEN, 2.0).action == "rollback"
    promoted = act(DEFAULT, _state(), "promote", 1.0).state
    alone = Evidence(stage=Window(candidate=ArmCounts(requests=100, errors=90)))  # no stable
    decision = evaluate(DEFAULT, promoted, alone, 2.0)
    assert decision.action == "rollback" and decision.targets["stable"].role == "stable"
    assert decision.cause == "error_rate"  # the absolute guardrail: stable has no traffic now


def test_dry_run_checks_are_logged_but_never_acted_on():
    policy = replace(DEFAULT, dry_run_checks=("error_increase", "error_rate"))
    decision = evaluate(policy, _state(), BROKEN, 1.0)
    assert decision.action == "hold"
    logged = [c for c in decision.checks if c.lane == "guardrail" and c.outcome == "FAIL"]
    assert logged and not any(c.acting for c in logged)


def test_state_round_trips_through_its_dict():
    healthy = Evidence(stage=Window(candidate=ArmCounts(requests=60), stable=ArmCounts(600)))
    state = evaluate(DEFAULT, _state(), healthy, 1.0).state
    assert RolloutState.from_dict(state.to_dict()) == state
    assert state.guard_history["error_rate"] == (False,)


def test_prediction_divergence_fails_only_beyond_sampling_noise():
    """Two samples of one model's answers over 50 classes, 200 rows each (the monitor's default
    window for a verdict): their distance passed the default margin (0.2) in 3 of 8 windows, and
    each such window rolled a healthy candidate back. It fails now only where the monitor's
    distribution-free test also says the two differ by more than noise, at the level of the
    verdict's place in the step (200 verdicts read in turn at the first step's alpha)."""
    from monitors.drift import DriftSettings, column_drift, noise_p_value

    rng = np.random.default_rng(5)
    shares = rng.dirichlet(np.full(50, 0.5))
    comparison = Comparison("prediction_divergence", 0.2)  # as in the default comparisons
    alpha = comparison_alpha(DEFAULT, windows(DEFAULT, _state(), 0.0))

    def judged(candidate_shares: np.ndarray, verdict: int) -> tuple[str, float]:
        stable, candidate = (
            pd.Series(rng.choice(50, 200, p=p).astype(str)) for p in (shares, candidate_shares)
        )
        found = column_drift(stable, candidate, True, DriftSettings())
        p_value = noise_p_value(stable, candidate, categorical=True)
        evidence = Evidence(divergence=Divergence(found.score, found.threshold, p_value))
        return check_comparison(comparison, evidence, alpha, verdict).outcome, found.score

    healthy = [judged(shares, verdict) for verdict in range(1, 201)]
    assert sum(score > 0.2 for _, score in healthy) > 20  # what the distance alone failed
    assert "FAIL" not in {outcome for outcome, _ in healthy}
    moved = np.roll(shares, 1)  # each class's share given to another
    assert {judged(moved, verdict)[0] for verdict in range(1, 21)} == {"FAIL"}


def test_a_distance_comparison_read_at_every_verdict_keeps_its_share_of_alpha():
    """A distance is decided anew on new data (the monitor's every run, on a window of its own;
    the step's units, at every look while they grow), and the rollout read each verdict with
    the monitor's fixed noise test (p < 0.001): a step that read 60 verdicts gave a healthy
    candidate 60 chances, and 6% of such steps failed, where the comparison's share of the
    budget is 0.67%. Each verdict read in a step is now held to a smaller level than the last.
    Here every verdict is over the margin, its p-value uniform as it is where the two do not
    differ: the worst a healthy candidate can be handed."""
    rng = np.random.default_rng(11)
    policy = DEFAULT
    share = comparison_alpha(policy, windows(policy, _state(), 0.0))
    failed = 0
    for _ in range(500):
        state = _state()
        for p_value in rng.random(60):
            evidence = Evidence(divergence=Divergence(0.3, 0.1, float(p_value)))
            decision = evaluate(policy, state, evidence, 1.0)
            state = decision.state
            if decision.action == "rollback":
                failed += 1
                break
    assert share == pytest.approx(0.04 * 0.9 / 4 * 2 / 3)  # four, the first of 3 steps, no gate
    assert failed <= 500 * share * 2  # 3 expected at most; 33 with a fixed level per verdict


def test_a_verdict_read_again_is_not_a_new_look_and_a_new_step_counts_afresh():
    policy = DEFAULT
    within = Evidence(divergence=Divergence(0.05, 0.1, 1.0))
    state = _state()
    for _ in range(3):  # looks every 10 s at a verdict that has not changed
        state = evaluate(policy, state, within, 1.0).state
    assert state.verdicts_read == {"prediction_divergence": (1, 0.05, 1.0)}
    paused = act(policy, state, "pause", 2.0).state
    moved = Evidence(divergence=Divergence(0.06, 0.1, 1.0))
    assert evaluate(policy, paused, moved, 3.0).state.verdicts_read == state.verdicts_read
    state = evaluate(policy, state, moved, 3.0).state
    assert state.verdicts_read == {"prediction_divergence": (2, 0.06, 1.0)}
    assert RolloutState.from_dict(state.to_dict()) == state
    level = evaluate(policy, state, moved, 4.0).checks[-1].statistic["level"]
    assert level == pytest.approx(comparison_alpha(policy, windows(policy, state, 4.0)) / 6)
    advanced = act(policy, act(policy, state, "pause", 5.0).state, "promote", 6.0).state
    assert advanced.verdicts_read == state.verdicts_read  # not at a step: nothing acts on them
    next_step = replace(state, step=1, step_started=7.0, verdicts_read={})
    assert evaluate(policy, next_step, moved, 8.0).state.verdicts_read == {
        "prediction_divergence": (1, 0.06, 1.0)
    }


def test_a_candidate_whose_reasons_differ_from_stables_beyond_the_margin_fails():
    """attribution_divergence: the monitor's distance between the candidate's and stable's
    attribution shares in the same window, against the policy's margin."""
    comparison = Comparison("attribution_divergence", 0.2)

    def judged(distance: float, p_value: float = 0.0):
        reasons = Divergence(distance, 0.0, p_value)
        return check_comparison(comparison, Evidence(attribution_divergence=reasons), 0.05)

    waiting = check_comparison(comparison, Evidence(), 0.05)
    close, apart, noisy = judged(0.05), judged(0.35), judged(0.35, p_value=0.03)
    assert waiting.outcome == "INSUFFICIENT" and "no verdict" in waiting.reason
    assert close.outcome == "PASS" and apart.outcome == "FAIL"
    assert "attribution_divergence 0.3500 over 0.2000" in apart.reason
    assert noisy.outcome == "INSUFFICIENT" and "sampling noise" in noisy.reason
    config = RolloutConfig(
        candidate="candidate",
        steps=[{"weight": 10, "min_duration_s": 60}],
        comparisons=[{"metric": "attribution_divergence", "margin": 0.2}],
    )
    assert (
        config.policy("cancer", "stable", 100.0).comparisons[0].metric == "attribution_divergence"
    )


def test_only_the_policys_distance_comparisons_count_their_verdicts():
    """The monitor hands over a verdict on the candidate's reasons whether or not the policy
    compares them; one the policy does not judge spends nothing and is not kept."""
    reasons = Evidence(attribution_divergence=Divergence(0.13, 0.0, 0.0003))
    assert evaluate(DEFAULT, _state(), reasons, 1.0).state.verdicts_read == {}


def test_even_shares_read_the_larger_arm_at_the_smaller_ones_rate():
    from traffic.rollout import even_shares

    policy = RolloutConfig(
        candidate="candidate", steps=[{"weight": w} for w in (5, 50, 70)]
    ).policy("cancer", "stable", slo_ms=100.0)
    state = _state()
    shares = [even_shares(policy, replace(state, step=k)) for k in range(3)]
    assert shares[0] == {"candidate": 1.0, "stable": pytest.approx(5 / 95)}
    assert shares[1] == {"candidate": 1.0, "stable": 1.0}
    assert shares[2] == {"candidate": pytest.approx(30 / 70), "stable": 1.0}


def test_a_state_saved_by_another_version_is_read_with_what_this_one_knows():
    """Monitors of two versions share the state in an upgrade: a field only the newer one keeps
    is left out by the older, one a state saved before it lacks takes its default."""
    saved = _state().to_dict()
    newer = {**saved, "a_later_field": [1, 2]}
    assert RolloutState.from_dict(newer) == _state()
    older = {k: v for k, v in saved.items() if k not in ("stable_model", "verdicts_read")}
    assert RolloutState.from_dict(older) == _state()
