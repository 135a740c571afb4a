"""The evidence a rollout is judged on, gathered from a real monitor store: the latency_ratio
guardrail's threshold is an upper confidence bound for stable's median in the same window, so a
handful of stable answers (requests still in flight when a candidate was promoted) sets none, and
a slower candidate judged against them is not rolled back on their say."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from monitors.drift import DriftSettings, predictions_apart
from monitors.records import PredictionRecord
from monitors.store import MonitorStore
from service.config import RolloutConfig
from service.monitor.evidence import EvidenceGatherer
from traffic.rollout import start, windows
from traffic.rollout_checks import (
    check_comparison,
    check_guardrail,
    comparison_alpha,
    guardrail_alphas,
    latency_threshold_rank,
)

POLICY = RolloutConfig(candidate="next", steps=[{"weight": 50}]).policy("churn", "stable", 100.0)
LATENCY = next(g for g in POLICY.guardrails if g.metric == "latency_ratio")
STARTED = 1000.0
DRIFT = DriftSettings()


def answers(variant: str, latencies_s, first_at: float, unit=None) -> list[PredictionRecord]:
    """One answer per latency; ``unit``: the routing key's digest they share (default: none,
    each request its own unit)."""
    return [
        PredictionRecord(
            f"{variant}:{first_at}:{i}",
            first_at + i * 0.01,
            "churn",
            variant,
            f"churn:{variant}",
            ["yes"],
            float(latency),
            unit=unit,
        )
        for i, latency in enumerate(latencies_s)
    ]


def judged(store: MonitorStore, now: float, policy=POLICY):
    state = start(policy, "churn:v2", STARTED).state
    evidence = EvidenceGatherer(store, DRIFT).gather(policy, state, now)
    alphas = guardrail_alphas(policy, windows(policy, state, now))
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


def test_a_heavy_user_with_slow_requests_counts_once_and_rolls_back_no_healthy_candidate(
    open_database,
):
    """Routing is sticky, so one user's requests all land in one arm. A heavy user whose calls
    are slow (large batches) made three quarters of a healthy candidate's requests: counted per
    request, the latency guardrail rolled it back; counted once per unit, that user is one of
    the arm's 401 and the arm is as fast as stable."""
    rng = np.random.default_rng(4)
    store = MonitorStore(open_database())
    store.add_records(answers("stable", rng.lognormal(np.log(0.010), 0.3, 2000), STARTED + 1))
    users = rng.lognormal(np.log(0.010), 0.3, 400)
    for i, latency in enumerate(users):  # 400 users, one request each
        store.add_records(answers("next", [latency], STARTED + 1 + i * 0.01, unit=f"{i:032x}"))
    heavy = answers("next", rng.lognormal(np.log(0.050), 0.3, 1200), STARTED + 2.005, "f" * 32)
    store.add_records(heavy)
    stage, result, _ = judged(store, STARTED + 30)
    assert result.outcome == "PASS", result.reason
    assert stage.candidate.requests == 401  # units, each counted once
    by_request = replace(POLICY, unit="request")  # what the policy's unit: request means
    stage, result, _ = judged(store, STARTED + 30, by_request)
    assert stage.candidate.requests == 1600 and result.outcome == "FAIL"


def test_a_slowdown_of_both_arms_after_stables_first_answers_rolls_back_no_candidate(
    open_database,
):
    """The latency_ratio threshold came from stable's first 10,000 answers in a window, the
    candidate's count above it from all of its answers there. At a busy endpoint those first
    answers are the window's first minutes: when every answer grew slower later in the stage (a
    traffic peak, a slower host), the candidate was judged against stable's faster beginning,
    and a candidate as fast as stable at every moment was rolled back. Both arms are now read
    over the same span."""
    rng = np.random.default_rng(12)
    store = MonitorStore(open_database())
    for variant in ("stable", "next"):  # a 50% step: both arms alike at every moment
        store.add_records(answers(variant, rng.lognormal(np.log(0.010), 0.2, 10_000), STARTED))
        later = rng.lognormal(np.log(0.020), 0.2, 15_000)  # then both twice as slow
        store.add_records(answers(variant, later, STARTED + 100))
    stage, result, _ = judged(store, STARTED + 260)
    assert stage.stable.requests == stage.candidate.requests == 25_000
    assert result.outcome == "PASS", result.reason
    assert stage.threshold_ms > 1.5 * 15  # over the whole span, stable's median is the later one


def regressor_answers(variant: str, errors, first_at: float) -> list[PredictionRecord]:
    """Labeled answers of a regressor whose label is always 100 and whose error is ``errors``."""
    return [
        PredictionRecord(
            f"{variant}:{first_at}:{i}",
            first_at + i * 0.01,
            "diab",
            variant,
            "m",
            [100 + float(e)],
            0.01,
        )
        for i, e in enumerate(errors)
    ]


@pytest.mark.parametrize(("scale", "outcome"), [(1.0, "PASS"), (2.0, "FAIL")])
def test_a_regressor_is_judged_on_its_answers_within_stables_usual_error(
    open_database, scale, outcome
):
    """A regressor's accuracy is its share of answers within stable's 95th percentile absolute
    error on its reference (``within``): the same errors pass, errors twice as large fail, with
    the default margin. Before, a regressor's accuracy was left out and its labels judged
    nothing."""
    rng = np.random.default_rng(5)
    policy = RolloutConfig(candidate="next", steps=[{"weight": 50}]).policy(
        "diab", "stable", 100.0, regression=True
    )
    within = float(np.quantile(np.abs(rng.normal(0, 40, 1000)), 0.95))  # on the reference
    store = MonitorStore(open_database())
    for variant, sd in (("stable", 40), ("next", 40 * scale)):
        records = regressor_answers(variant, rng.normal(0, sd, 4000), STARTED + 1)
        store.add_records(records)
        store.add_labels([(r.request_id, 100.0) for r in records])
    state = start(policy, "diab:v2", STARTED).state
    now = STARTED + 60
    evidence = EvidenceGatherer(store, DRIFT).gather(policy, state, now, within)
    for arm in (evidence.stage.stable, evidence.stage.candidate):
        assert arm.labeled == 4000
    assert abs(evidence.stage.stable.correct / 4000 - 0.95) < 0.02
    accuracy = next(c for c in policy.comparisons if c.metric == "accuracy")
    alpha = comparison_alpha(policy, windows(policy, state, now))
    result = check_comparison(accuracy, evidence, alpha)
    assert result.outcome == outcome
    assert result.statistic["accurate_within"] == within  # the audit says what right meant


def mirrored(
    first_at: float, rows: int, disagreeing: int, unit=None, shadow="next"
) -> PredictionRecord:
    """A request stable answered with ``rows`` rows, mirrored to ``shadow``, which answered
    otherwise on the first ``disagreeing`` of them."""
    ours = ["yes"] * rows
    theirs = ["no"] * disagreeing + ["yes"] * (rows - disagreeing)
    return PredictionRecord(
        f"churn:{first_at:.3f}",
        first_at,
        "churn",
        "stable",
        "churn:stable",
        ours,
        0.01,
        shadow={shadow: theirs},
        unit=unit,
    )


def test_a_shadow_step_counts_each_user_once_not_each_row_of_their_batches(open_database):
    """A shadow step's agreement counted every mirrored row as an independent trial: one user's
    batch of 600 rows of hard inputs, on which the candidate answered otherwise in 240, made a
    third of the rows disagree, and a candidate that agreed with stable for 299 of 300 users was
    rolled back with "confidence". Each unit counts once now, by its first mirrored row, as the
    other comparisons count it; rows of requests a shadow call did not answer, or that another
    shadow mirrored, are not counted."""
    policy = RolloutConfig(
        candidate="next",
        steps=[{"weight": 0, "shadow": True}],
        comparisons=[{"metric": "shadow_agreement", "margin": 0.05}],
    ).policy("churn", "stable", 100.0)
    store = MonitorStore(open_database())
    records = [
        mirrored(STARTED + 1 + i * 0.01, 1, int(i == 0), unit=f"{i:032x}") for i in range(300)
    ]
    records.append(mirrored(STARTED + 2.005, 600, 240, unit="f" * 32))  # the batch user
    records.append(mirrored(STARTED + 2.006, 5, 5, unit="e" * 32, shadow="other_one"))
    records.append(mirrored(STARTED - 5, 5, 5, unit="d" * 32))  # before the step
    store.add_records(records)
    state = start(policy, "churn:v2", STARTED).state
    now = STARTED + 30
    evidence = EvidenceGatherer(store, DRIFT).gather(policy, state, now)
    assert evidence.shadow == (301, 299)  # user 0, and the batch by its first row
    alpha = comparison_alpha(policy, windows(policy, state, now))
    assert check_comparison(policy.comparisons[0], evidence, alpha).outcome == "PASS"
    by_request = replace(policy, unit="request")
    evidence = EvidenceGatherer(store, DRIFT).gather(by_request, state, now)
    assert evidence.shadow == (900, 659)  # every row, as before
    assert check_comparison(policy.comparisons[0], evidence, alpha).outcome == "FAIL"


def test_predictions_are_compared_on_each_arms_unpinned_units_in_the_step(open_database):
    """prediction_divergence (a default comparison) read the monitor's distance, which is of
    each variant's newest rows: requests a tester pinned to the candidate, its answers from
    before the step, and a heavy user's hundreds of requests on stable all counted, though
    pinned requests are not evidence and a user's requests are not independent. Both arms are
    now read as the other comparisons read them: each unit's first answer in the step."""
    rng = np.random.default_rng(8)

    def answered(variant, classes, first_at, unit=None, pinned=False):
        return [
            PredictionRecord(
                f"churn:{variant}{first_at}:{i}",
                first_at + i * 0.01,
                "churn",
                variant,
                f"churn:{variant}",
                [answer],
                0.01,
                unit=f"{variant}{i:031x}" if unit is None else unit,
                pinned=pinned,
            )
            for i, answer in enumerate(classes)
        ]

    def users(n):
        return [str(answer) for answer in rng.choice(["no", "yes"], n, p=[0.7, 0.3])]

    store = MonitorStore(open_database())
    records = [
        *answered("stable", users(400), STARTED + 1),
        *answered("next", users(400), STARTED + 1),
        *answered("next", ["yes"] * 300, STARTED + 5, pinned=True),  # a tester's
        *answered("next", ["yes"] * 500, STARTED - 100),  # before the step
        *answered("stable", ["no"] * 2000, STARTED + 6, unit="f" * 32),  # one heavy user
    ]
    store.add_records(records)
    read_as_rows = {
        variant: pd.Series([r.predictions[0] for r in records if r.variant == variant])
        for variant in ("stable", "next")
    }
    rows_apart, _ = predictions_apart(read_as_rows["stable"], read_as_rows["next"], True, DRIFT)
    assert rows_apart.score > 0.2  # over the default margin, and far beyond noise
    state = start(POLICY, "churn:v2", STARTED).state
    now = STARTED + 60
    evidence = EvidenceGatherer(store, DRIFT).gather(POLICY, state, now)
    assert evidence.divergence.distance < 0.1
    alpha = comparison_alpha(POLICY, windows(POLICY, state, now))
    divergence = next(c for c in POLICY.comparisons if c.metric == "prediction_divergence")
    assert check_comparison(divergence, evidence, alpha).outcome == "PASS"
    again = "next" + "0" * 31  # the candidate's first user, answered "no" or "yes" before
    store.add_records(answered("next", ["yes", "no"], STARTED + 30, unit=again))
    assert EvidenceGatherer(store, DRIFT).gather(POLICY, state, now).divergence == (
        evidence.divergence
    )  # a unit counts by its first answer: its second changes nothing


def _split_answers(rng, weight: float, users: int, yes: float, first_at: float, seconds: float):
    """``users`` units arriving evenly over ``seconds`` from ``first_at``, each answered once
    ("yes" with probability ``yes``), split between the arms as a step of ``weight`` percent
    splits them (by a hash of the unit: its last 8 hex characters, as the gateway's are)."""
    records = []
    for i, answer in enumerate(rng.choice(["yes", "no"], users, p=[yes, 1 - yes])):
        unit = rng.bytes(8).hex()
        variant = "next" if rng.random() < weight / 100 else "stable"
        at = first_at + i * seconds / users
        records.append(
            PredictionRecord(
                f"churn:{unit}",
                at,
                "churn",
                variant,
                f"churn:{variant}",
                [str(answer)],
                0.01,
                unit=unit,
            )  # fmt: skip
        )
    return records


def _divergence_checked(store, policy, now):
    state = start(policy, "churn:v2", STARTED).state
    evidence = EvidenceGatherer(store, DRIFT).gather(policy, state, now)
    alpha = comparison_alpha(policy, windows(policy, state, now))
    divergence = next(c for c in policy.comparisons if c.metric == "prediction_divergence")
    return evidence.divergence, check_comparison(divergence, evidence, alpha)


def test_predictions_are_compared_over_the_same_span_of_the_step_for_both_arms(open_database):
    """Each arm's first 10,000 units in the step were compared, and at a 5% step stable's fill
    in a twentieth of the time the candidate's take: when the inputs' mix moved later in the
    step (the hour, a campaign), the candidate's later units, answered as stable answers them,
    were judged against stable's earlier ones, and a candidate that agrees with stable was
    rolled back. Both arms are now read over the same span."""
    policy = RolloutConfig(candidate="next", steps=[{"weight": 5}]).policy("churn", "stable", 100.0)
    rng = np.random.default_rng(9)
    store = MonitorStore(open_database())
    store.add_records(_split_answers(rng, 5, 10_000, 0.3, STARTED, 100))
    store.add_records(_split_answers(rng, 5, 20_000, 0.8, STARTED + 100, 800))  # the mix moves
    found, checked = _divergence_checked(store, policy, STARTED + 900)
    assert checked.outcome == "PASS", checked.reason


def test_a_one_percent_step_at_a_busy_endpoint_still_gets_a_verdict_on_its_predictions(
    open_database,
):
    """Read until the first arm had 10,000 units, a 1% step's candidate had about 100 when
    stable had its 10,000, fewer than a verdict needs (200), and never more: the comparison
    stayed INSUFFICIENT and the rollout paused. Stable's units are read at the candidate's
    share of theirs, so both fill alike."""
    policy = RolloutConfig(candidate="next", steps=[{"weight": 1}]).policy("churn", "stable", 100.0)
    rng = np.random.default_rng(10)
    store = MonitorStore(open_database())
    store.add_records(_split_answers(rng, 1, 30_000, 0.3, STARTED, 300))
    found, checked = _divergence_checked(store, policy, STARTED + 400)
    assert found is not None and checked.outcome == "PASS", checked.reason


def test_a_regressors_shadow_agrees_within_stables_usual_error(open_database):
    """A regressor's shadow agreed only where its value was stable's within 1e-6 relative, so a
    shadow step judging shadow_agreement rolled back every retrained regressor, however close
    (here within a tenth of stable's usual error on every row). It agrees now where it is as
    close to stable's answer as an accurate answer is to its label (``within``), the scale
    the rollout judges a regressor's accuracy on."""
    policy = RolloutConfig(
        candidate="next",
        steps=[{"weight": 0, "shadow": True}],
        comparisons=[{"metric": "shadow_agreement", "margin": 0.05}],
    ).policy("diab", "stable", 100.0, regression=True)
    rng = np.random.default_rng(6)
    within = 40.0
    records = [
        PredictionRecord(
            f"diab:{i}",
            STARTED + 1 + i * 0.01,
            "diab",
            "stable",
            "diab:stable",
            [float(value)],
            0.01,
            shadow={"next": [float(value + rng.normal(0, within / 10))]},
        )
        for i, value in enumerate(rng.normal(150, 70, 300))
    ]
    records[0].shadow["next"] = [records[0].predictions[0] + 3 * within]  # one far off
    store = MonitorStore(open_database())
    store.add_records(records)
    state = start(policy, "diab:v2", STARTED).state
    now = STARTED + 30
    evidence = EvidenceGatherer(store, DRIFT).gather(policy, state, now, within)
    assert evidence.shadow == (300, 299)
    alpha = comparison_alpha(policy, windows(policy, state, now))
    assert check_comparison(policy.comparisons[0], evidence, alpha).outcome == "PASS"


def test_a_stored_record_with_no_rows_is_left_out_of_the_predictions_compared(open_database):
    """Monitors refuse an answer with no rows, but a store an earlier version wrote may hold
    one; reading the first row of each unit's answer failed on it, at every look."""
    store = MonitorStore(open_database())
    empty = PredictionRecord("churn:e", STARTED + 1, "churn", "next", "churn:next", [], 0.01)
    answered = PredictionRecord("churn:a", STARTED + 2, "churn", "next", "churn:next", ["no"], 0.01)
    store.add_records([empty, answered])
    (row,) = store.first_rows("churn", ["next"], STARTED, 10)["next"]
    assert row.prediction == "no"
