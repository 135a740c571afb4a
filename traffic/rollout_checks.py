"""The evidence a rollout is judged on, and the checks that judge it: PASS, FAIL or INSUFFICIENT.

Evidence is plain counts the service layer gathers from the monitor's records over two windows
(``Windows``): the current stage (the step the candidate is at, or the promoted phase) and the
current guardrail epoch inside it, plus the monitor's latest distances. Every rate check is an
always-valid e-value test (traffic/sequential.py); insufficient data never fails a check and never
passes one.

The false-rollback budget ``alpha`` is spent once per rollout, over every check and every look:

- guardrails share ``guardrail_alpha`` equally; each spends half of its share on the data of the
  whole stage (``stage_share``: 2/3 to the first, 2/9 to the second, ..., the last what is left)
  and half on the data of its current epoch (``epoch_share``: 1/(e(e+1)) to epoch e), so a
  candidate that breaks late is caught within about an epoch, and a rollout that waits (paused,
  at a gate) never runs out of budget;
- a latency_ratio guardrail's threshold is ``max`` times an upper confidence bound for stable's
  quantile in the same window, not its sample quantile, spending ``LATENCY_BOUND_SHARE`` of the
  guardrail's alpha in that window (the test on the candidate spends the rest): a point estimate
  is whatever stable's few answers in a window happened to take (requests still in flight when a
  candidate is promoted), and a healthy candidate judged against it was rolled back;
- the offline gate, before any traffic, spends ``OFFLINE_GATE_SHARE`` of the rest on one test;
- comparisons share what is left equally, each spending it over the steps as above: rate comparisons
  (error_rate, slow_rate, accuracy, shadow_agreement) on the data of the current step (the traffic
  split is constant within a step, so a load spike or an outage that hits both arms hits them
  alike); distance comparisons (prediction_divergence, attribution_divergence) on verdicts, each
  a test with a p-value of data of its own (the step's first units of each arm over the same
  span, which grow until the first arm's are full; for reasons, a sample of them, drawn anew as
  they grow), the k-th verdict read in a step held to ``kth_share(k)`` of the step's alpha, so
  that however many it reads they spend no more.
  input_drift is the exception: the share of the candidate's features the monitor's drift rule
  flags in its step's units against its reference (each at ``NOISE_ALPHA`` per look), a check on
  the traffic more than on the candidate, it spends nothing and is not in the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from traffic.rollout_policy import CompareMetric, Comparison, Guardrail, RolloutPolicy
from traffic.sequential import (
    RARE,
    BetaPrior,
    one_arm,
    quantile_upper_rank,
    threshold,
    two_arms,
)

Outcome = Literal["PASS", "FAIL", "INSUFFICIENT"]
RATE_METRICS = ("error_rate", "slow_rate", "accuracy", "shadow_agreement")
DISTANCE_METRICS = ("prediction_divergence", "attribution_divergence")
"""Comparisons of a distance whose noise test the rollout holds to its own budget."""
PRIOR_WINDOW_S = 600.0
"""How much of stable's data from just before a window informs the prior over its rates."""
OFFLINE_GATE_SHARE = 0.1
"""Of the comparisons' budget, the share the offline gate's one test spends (service/monitor/
offline_gate.py): it refuses a candidate before any traffic only when it is worse on the labeled
reference by more than its margin with confidence, a test like any other check's."""
LATENCY_BOUND_SHARE = 0.5
"""Of a latency_ratio guardrail's alpha in a window, the share its threshold's confidence bound
spends; the test of the candidate's share slower than the threshold spends the rest."""


@dataclass(frozen=True)
class ArmCounts:
    """One variant's requests in a window, one per unit (a user, by its routing key: users are
    independent, their requests are not): how many, how many failed (5xx or refused), were
    slower than ``slow_ms``, gave an invalid output (NaN, infinity), were labeled and were right;
    how many were slower than the latency_ratio guardrail's threshold (``above``) and than the
    p99_latency_ms guardrail's limit (``over_limit``); its p99 latency, for the audit only."""

    requests: int = 0
    errors: int = 0
    slow: int = 0
    invalid: int = 0
    labeled: int = 0
    correct: int = 0
    above: int = 0
    over_limit: int = 0
    p99_ms: float | None = None

    @property
    def answered(self) -> int:
        return self.requests - self.errors


@dataclass(frozen=True)
class Window:
    """Both arms over the same stretch of time, and stable's data just before it (which informs
    the prior over stable's rates; fixed before the window's data, so validity never rests on
    it). ``threshold_ms``: the latency the candidate's ``above`` counts were judged against
    (``max`` x an upper confidence bound for stable's quantile in the same window,
    ``latency_threshold_rank``); None when stable answered too few requests in it for one."""

    candidate: ArmCounts = ArmCounts()
    stable: ArmCounts = ArmCounts()
    stable_before: ArmCounts = ArmCounts()
    threshold_ms: float | None = None


@dataclass(frozen=True)
class Divergence:
    """How far something of the candidate's is from stable's in the same window: its predicted
    classes' shares, or its reasons (its features' shares of mean |SHAP|)."""

    distance: float
    threshold: float
    """The monitor's drift threshold for predictions, no margin below it held (0 for reasons)."""
    p_value: float
    """Of the monitor's distribution-free test that the two come from one distribution. A
    distance alone is not evidence: between two samples of one model's answers over 50 classes,
    200 rows each, it passed 0.2 in 3 of 8 windows."""


@dataclass(frozen=True)
class Evidence:
    stage: Window = Window()
    """Since the stage started (the current step, or the promotion)."""
    epoch: Window = Window()
    """Since the current guardrail epoch started (``guard_window_s`` long, inside the stage)."""
    divergence: Divergence | None = None
    """The candidate's predictions against stable's in the current step."""
    drifted_share: float | None = None
    """Share of the candidate's input features that drifted from its reference."""
    attribution_divergence: Divergence | None = None
    """How far the candidate's reasons (shares of mean |SHAP| per feature) are from stable's."""
    shadow: tuple[int, int] | None = None
    """In a shadow step: (mirrored rows, rows where the candidate agreed with stable), one row
    per unit (its first mirrored one) unless the policy counts requests."""
    accurate_within: float | None = None
    """For regressors: how close to its label an answer counted as right (None: classifiers)."""


@dataclass(frozen=True)
class Windows:
    """Where the evidence of one evaluation starts, and the stage's and epoch's numbers (1-based;
    the promoted phase is stage len(steps) + 1; epochs count from the start of the analysis)."""

    stage_start: float
    epoch_start: float
    stage: int
    epoch: int


@dataclass(frozen=True)
class CheckResult:
    name: str
    lane: Literal["guardrail", "comparison"]
    outcome: Outcome
    reason: str
    statistic: dict = field(default_factory=dict)
    required: bool = True
    acting: bool = True
    """False for a dry-run check: logged, never acted on."""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "lane": self.lane,
            "outcome": self.outcome,
            "reason": self.reason,
            "statistic": self.statistic,
            "required": self.required,
            "acting": self.acting,
        }


def stage_share(k: int, stages: int) -> float:
    """Share of a budget stage ``k`` of ``stages`` may spend: 2/3, 2/9, ... (2 / 3^k), and the last
    what is left. Most goes to the first step: that is where a bad candidate is caught, on the
    least traffic; later steps have more traffic and need less."""
    return 3.0 ** -(k - 1) if k >= stages else 2.0 * 3.0**-k


def kth_share(k: int) -> float:
    """Share of a budget the ``k``-th of a series (a guardrail's epochs, a distance comparison's
    verdicts) may spend: 1/(k(k+1)), adding up to 1 over unboundedly many, so a rollout may wait
    as long as it likes; late ones need only a little more evidence (log(k^2) more, in e-value
    terms)."""
    return 1.0 / (k * (k + 1))


def guardrail_alphas(policy: RolloutPolicy, windows: Windows) -> tuple[float, float]:
    """(alpha for the stage's data, alpha for the epoch's data) of each guardrail."""
    share = policy.guardrail_alpha / max(len(policy.guardrails), 1) / 2
    stages = len(policy.steps) + 1
    return share * stage_share(windows.stage, stages), share * kth_share(windows.epoch)


def offline_gate_alpha(policy: RolloutPolicy) -> float:
    """The level of the offline gate's test, before any traffic: ``OFFLINE_GATE_SHARE`` of the
    comparisons' budget (kept aside whether or not the gate runs)."""
    return (policy.alpha - policy.guardrail_alpha) * OFFLINE_GATE_SHARE


def comparison_alpha(policy: RolloutPolicy, windows: Windows) -> float:
    """Alpha of each comparison at this step (a distance comparison's, over all its verdicts)."""
    rated = [c for c in policy.comparisons if c.metric in (*RATE_METRICS, *DISTANCE_METRICS)]
    budget = (policy.alpha - policy.guardrail_alpha) * (1 - OFFLINE_GATE_SHARE)
    share = budget / max(len(rated), 1)
    steps = len(policy.steps)
    return share * stage_share(min(windows.stage, steps), steps)


def latency_threshold_rank(guard: Guardrail, stable_answers: int, alpha: float) -> int | None:
    """Which of stable's answers in a window (by rank, 1-based, fastest first) sets a
    latency_ratio guardrail's threshold there (``guard.max`` times its latency): an anytime-valid
    upper confidence bound for stable's ``guard.quantile``, spending ``LATENCY_BOUND_SHARE`` of
    the guardrail's ``alpha`` in that window. None when stable answered too few requests in it
    (for the median with the default budget: under 14 at the first step, 19 after a promotion):
    the guardrail then has nothing to judge on in that window."""
    return quantile_upper_rank(stable_answers, guard.quantile, alpha * LATENCY_BOUND_SHARE)


def latency_threshold(
    policy: RolloutPolicy, stable_answers: int, kth_fastest: Callable[[int], float], alpha: float
) -> float | None:
    """The latency_ratio guardrail's threshold in a window: ``max`` times the latency of stable's
    answer at ``latency_threshold_rank`` there (``kth_fastest(k)``, 1-based, in the caller's
    unit). None without that guardrail, or with too few stable answers for the bound."""
    ratio = next((g for g in policy.guardrails if g.metric == "latency_ratio"), None)
    rank = None if ratio is None else latency_threshold_rank(ratio, stable_answers, alpha)
    return None if rank is None else ratio.max * kth_fastest(rank)


def _guard_evalue(guard: Guardrail, window: Window) -> float | None:
    """The guardrail's log e-value on one window (None: nothing to judge it on)."""
    c, s = window.candidate, window.stable
    if guard.metric == "error_rate":
        return one_arm(c.errors, c.requests, guard.max)
    if guard.metric == "invalid_rate":
        return one_arm(c.invalid, c.answered, guard.max)
    if guard.metric == "p99_latency_ms":
        return one_arm(c.over_limit, c.answered, 0.01)
    if guard.metric == "latency_ratio":
        if window.threshold_ms is None:
            return None
        return one_arm(c.above, c.answered, 1.0 - guard.quantile)
    if not s.requests:
        return None
    before = window.stable_before
    return two_arms(
        (c.errors, c.requests),
        (s.errors, s.requests),
        guard.max,
        stable_prior=BetaPrior.informed(before.errors, before.requests),
    )


def _guard_rate(guard: Guardrail, arm: ArmCounts) -> float | None:
    """The candidate's observed value of what the guardrail limits, for the reason line."""
    counts = {
        "error_rate": (arm.errors, arm.requests),
        "error_increase": (arm.errors, arm.requests),
        "invalid_rate": (arm.invalid, arm.answered),
        "latency_ratio": (arm.above, arm.answered),
        "p99_latency_ms": (arm.over_limit, arm.answered),
    }[guard.metric]
    return counts[0] / counts[1] if counts[1] else None


def check_guardrail(
    guard: Guardrail, evidence: Evidence, alphas: tuple[float, float], history: tuple
) -> tuple[CheckResult, tuple]:
    """(CheckResult, the new rejection history). FAIL when the stage's or the epoch's e-value
    reaches its threshold in ``breaches`` of the last ``of_last`` evaluations."""
    name, stage = guard.metric, evidence.stage
    if stage.candidate.requests < guard.min_count:
        count = stage.candidate.requests
        reason = f"{count} candidate samples in this stage, {guard.min_count} needed"
        return CheckResult(name, "guardrail", "INSUFFICIENT", reason, {"count": count}), history
    tests = {}
    for label, window, alpha in (("stage", stage, alphas[0]), ("epoch", evidence.epoch, alphas[1])):
        if guard.metric == "latency_ratio":
            alpha *= 1 - LATENCY_BOUND_SHARE
        evalue = _guard_evalue(guard, window)
        if evalue is not None:
            tests[label] = {
                "log_e": round(evalue, 4),
                "threshold": round(threshold(alpha), 4),
                "requests": window.candidate.requests,
                "rate": _guard_rate(guard, window.candidate),
            }
    if not tests:
        reason = "too few stable answers in the window to compare with"
        return CheckResult(name, "guardrail", "INSUFFICIENT", reason, {}), history
    rejected = [label for label, t in tests.items() if t["log_e"] >= t["threshold"]]
    history = (*history, bool(rejected))[-guard.of_last :]
    statistic = {"max": guard.max, **tests, "rejections": sum(history)}
    if guard.metric == "latency_ratio":
        statistic["threshold_ms"] = stage.threshold_ms
    what = _describe(guard)
    if rejected and sum(history) >= guard.breaches:
        rate = tests[rejected[0]]["rate"]
        reason = f"{what}: {rate:.4g} in the {rejected[0]} window, with confidence"
        return CheckResult(name, "guardrail", "FAIL", reason, statistic), history
    return CheckResult(name, "guardrail", "PASS", f"{what}: not shown", statistic), history


def _describe(guard: Guardrail) -> str:
    return {
        "error_rate": f"failed share above {guard.max:g}",
        "error_increase": f"failed share above stable's by more than {guard.max:g}",
        "invalid_rate": f"invalid outputs above {guard.max:g}",
        "latency_ratio": (
            f"p{guard.quantile * 100:g} latency above {guard.max:g} x stable's "
            f"(share slower than that above {1 - guard.quantile:g})"
        ),
        "p99_latency_ms": f"p99 latency above {guard.max:g} ms (share slower above 0.01)",
    }[guard.metric]


def _rate_counts(metric: str, window: Window) -> tuple[tuple, tuple, tuple] | None:
    """((bad, trials) of the candidate, of stable, and of stable before the window); bad means
    an error, a slow answer or a wrong one."""
    arms = (window.candidate, window.stable, window.stable_before)
    if metric == "error_rate":
        return tuple((a.errors, a.requests) for a in arms)
    if metric == "slow_rate":
        return tuple((a.slow, a.answered) for a in arms)
    if metric == "accuracy":
        return tuple((a.labeled - a.correct, a.labeled) for a in arms)
    return None


def check_comparison(
    comparison: Comparison, evidence: Evidence, alpha: float, verdict: int = 1
) -> CheckResult:
    """One comparison of the candidate with stable in the current step (``alpha``: its share;
    ``verdict``: for a distance comparison, which of its verdicts in this step this is,
    from 1)."""
    name, margin = comparison.metric, comparison.margin
    insufficient = CheckResult(name, "comparison", "INSUFFICIENT", "", required=comparison.required)
    counts = _rate_counts(name, evidence.stage)
    limit = threshold(alpha)
    if counts is not None:
        candidate, stable, before = counts
        n_c, n_s = candidate[1], stable[1]
        if min(n_c, n_s) < comparison.min_samples:
            reason = f"{n_c} candidate and {n_s} stable samples, {comparison.min_samples} needed"
            return _with(insufficient, reason, {"candidate": n_c, "stable": n_s})
        prior = BetaPrior.informed(*before)
        worse = two_arms(candidate, stable, margin, True, RARE, prior)
        within = two_arms(candidate, stable, margin, False, RARE, prior)
        difference = candidate[0] / n_c - stable[0] / n_s
        statistic = {
            "difference": difference,
            "margin": margin,
            "log_e_worse": round(worse, 4),
            "log_e_within": round(within, 4),
            "threshold": round(limit, 4),
            "alpha": alpha,
            "candidate": n_c,
            "stable": n_s,
        }
        if name == "accuracy" and evidence.accurate_within is not None:
            statistic["accurate_within"] = evidence.accurate_within  # a regressor's, in label units
        what = "worse" if name != "accuracy" else "less accurate"
        if worse >= limit:
            reason = f"candidate {what} by more than {margin} ({difference:+.4f}), with confidence"
            return _with(insufficient, reason, statistic, "FAIL")
        if within >= limit:
            reason = f"candidate {what} by less than {margin} ({difference:+.4f}), with confidence"
            return _with(insufficient, reason, statistic, "PASS")
        return _with(insufficient, f"undecided: difference {difference:+.4f}", statistic)
    if name == "shadow_agreement":
        rows, agree = evidence.shadow or (0, 0)
        if rows < comparison.min_samples:
            return _with(insufficient, f"{rows} mirrored rows, {comparison.min_samples} needed")
        disagree = rows - agree
        above = one_arm(disagree, rows, margin, above=True)
        below = one_arm(disagree, rows, margin, above=False)
        statistic = {
            "disagreement": disagree / rows,
            "margin": margin,
            "log_e_above": round(above, 4),
            "log_e_below": round(below, 4),
            "threshold": round(limit, 4),
            "rows": rows,
        }
        if above >= limit:
            reason = f"disagrees on more than {margin} of rows ({disagree / rows:.4f})"
            return _with(insufficient, reason, statistic, "FAIL")
        if below >= limit:
            reason = f"disagrees on less than {margin} of rows ({disagree / rows:.4f})"
            return _with(insufficient, reason, statistic, "PASS")
        return _with(insufficient, f"undecided: disagreement {disagree / rows:.4f}", statistic)
    if name == "input_drift":
        value, limit_value, beyond_noise = evidence.drifted_share, margin, True
        statistic = {"value": value, "limit": limit_value}
    else:
        found = divergence(name, evidence)
        value = None if found is None else found.distance
        limit_value = margin if found is None else max(margin, found.threshold)
        level = alpha * kth_share(verdict)
        beyond_noise = found is not None and found.p_value <= level
        statistic = {"value": value, "limit": limit_value, "verdict": verdict, "level": level}
        if found is not None:
            statistic["p_value"] = found.p_value
    if value is None:
        return _with(insufficient, "no verdict from the monitor yet")
    if value > limit_value and not beyond_noise:
        reason = f"{name} {value:.4f} over {limit_value:.4f}, but no more than sampling noise"
        return _with(insufficient, reason, statistic)
    if value > limit_value:
        return _with(insufficient, f"{name} {value:.4f} over {limit_value:.4f}", statistic, "FAIL")
    return _with(insufficient, f"{name} {value:.4f} within {limit_value:.4f}", statistic, "PASS")


def divergence(name: CompareMetric, evidence: Evidence) -> Divergence | None:
    """The latest verdict for a distance comparison (None before its first)."""
    if name == "prediction_divergence":
        return evidence.divergence
    return evidence.attribution_divergence


def _with(
    base: CheckResult, reason: str, statistic: dict | None = None, outcome: Outcome = "INSUFFICIENT"
) -> CheckResult:
    return CheckResult(
        base.name, base.lane, outcome, reason, statistic or {}, base.required, base.acting
    )


def applies(comparison: Comparison, shadow_step: bool) -> bool:
    """Shadow agreement is judged in shadow steps, everything else in steps with traffic."""
    return (comparison.metric == "shadow_agreement") == shadow_step
