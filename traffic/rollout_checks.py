"""The evidence a rollout is judged on, and the checks that judge it: PASS, FAIL or INSUFFICIENT.

Evidence is plain counts the service layer gathers from the monitor's records (since the analysis
started, and over the recent guard window) plus the monitor's latest distances. Insufficient data
is its own outcome: it never fails a check and never passes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from traffic.rollout_policy import Comparison, Guardrail, RolloutPolicy
from traffic.sequential import difference, proportion

Outcome = Literal["PASS", "FAIL", "INSUFFICIENT"]
RATE_METRICS = ("error_rate", "slow_rate", "accuracy", "shadow_agreement")


@dataclass(frozen=True)
class ArmCounts:
    """One variant's requests over a window: how many, how many failed (5xx), were slow, gave an
    invalid output (NaN, out of range), were labeled and were right; and its p99 latency."""

    requests: int = 0
    errors: int = 0
    slow: int = 0
    invalid: int = 0
    labeled: int = 0
    correct: int = 0
    p99_ms: float | None = None


@dataclass(frozen=True)
class Evidence:
    candidate: ArmCounts = ArmCounts()
    stable: ArmCounts = ArmCounts()
    """Both since the analysis started, in the same window."""
    recent_candidate: ArmCounts = ArmCounts()
    recent_stable: ArmCounts = ArmCounts()
    """Both over the guard window (the last ``guard_window_s``)."""
    divergence: tuple[float, float] | None = None
    """The candidate's predictions against stable's: (distance, the monitor's threshold)."""
    drifted_share: float | None = None
    """Share of the candidate's input features that drifted from its reference."""
    shadow: tuple[int, int] | None = None
    """In a shadow step: (mirrored rows, rows where the candidate agreed with stable)."""


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


def guard_value(guard: Guardrail, evidence: Evidence) -> tuple[float | None, int]:
    """(the guarded value over the guard window or None, the requests it rests on)."""
    arm = evidence.recent_candidate
    if guard.metric == "error_rate":
        return (arm.errors / arm.requests if arm.requests else None), arm.requests
    if guard.metric == "invalid_rate":
        answered = arm.requests - arm.errors
        return (arm.invalid / answered if answered else None), answered
    if guard.metric == "p99_latency_ms":
        return arm.p99_ms, arm.requests
    stable_p99 = evidence.recent_stable.p99_ms
    if arm.p99_ms is None or not stable_p99 or evidence.recent_stable.requests < guard.min_count:
        return None, 0
    return arm.p99_ms / stable_p99, arm.requests


def check_guardrail(guard: Guardrail, value: float | None, count: int, history: tuple) -> tuple:
    """(CheckResult, the new breach history). A breach needs ``min_count`` requests; ``breaches``
    of the last ``of_last`` evaluations with enough data fail the guardrail."""
    name = guard.metric
    if value is None or count < guard.min_count:
        reason = f"{count} requests in the guard window, {guard.min_count} needed"
        return CheckResult(name, "guardrail", "INSUFFICIENT", reason, {"count": count}), history
    breached = value > guard.max
    history = (*history, breached)[-guard.of_last :]
    statistic = {"value": value, "max": guard.max, "count": count, "breaches": sum(history)}
    if sum(history) >= guard.breaches:
        reason = (
            f"{name} {value:.4g} over {guard.max:g} in {sum(history)} of the last {len(history)}"
        )
        return CheckResult(name, "guardrail", "FAIL", reason, statistic), history
    return CheckResult(
        name, "guardrail", "PASS", f"{name} {value:.4g} within {guard.max:g}", statistic
    ), history


def _rate_counts(metric: str, evidence: Evidence) -> tuple[int, int, int, int] | None:
    """(bad events, trials) for candidate then stable; bad = error, slow or wrong answer."""
    c, s = evidence.candidate, evidence.stable
    if metric == "error_rate":
        return c.errors, c.requests, s.errors, s.requests
    if metric == "slow_rate":
        return c.slow, c.requests, s.slow, s.requests
    if metric == "accuracy":
        return c.labeled - c.correct, c.labeled, s.labeled - s.correct, s.labeled
    return None


def check_comparison(comparison: Comparison, evidence: Evidence, alpha: float) -> CheckResult:
    """One comparison of the candidate with stable (``alpha``: this check's share)."""
    name, margin = comparison.metric, comparison.margin
    insufficient = CheckResult(name, "comparison", "INSUFFICIENT", "", required=comparison.required)
    counts = _rate_counts(name, evidence)
    if counts is not None:
        bad_c, n_c, bad_s, n_s = counts
        if min(n_c, n_s) < comparison.min_samples:
            reason = f"{n_c} candidate and {n_s} stable samples, {comparison.min_samples} needed"
            return _with(insufficient, reason, {"candidate": n_c, "stable": n_s})
        interval = difference(bad_c, n_c, bad_s, n_s, tau=max(margin, 0.005), alpha=alpha)
        statistic = {
            **interval.to_dict(),
            "margin": margin,
            "alpha": alpha,
            "candidate": n_c,
            "stable": n_s,
        }
        what = "worse" if name != "accuracy" else "less accurate"
        if interval.low > margin:
            reason = f"candidate {what} by {interval.low:.4f} at least, margin {margin}"
            return _with(insufficient, reason, statistic, "FAIL")
        if interval.high < margin:
            reason = f"candidate {what} by {interval.high:.4f} at most, within margin {margin}"
            return _with(insufficient, reason, statistic, "PASS")
        reason = f"difference {interval.estimate:+.4f} in [{interval.low:.4f}, {interval.high:.4f}]"
        return _with(insufficient, f"undecided: {reason}", statistic)
    if name == "shadow_agreement":
        if evidence.shadow is None or evidence.shadow[0] < comparison.min_samples:
            rows = evidence.shadow[0] if evidence.shadow else 0
            return _with(insufficient, f"{rows} mirrored rows, {comparison.min_samples} needed")
        rows, agree = evidence.shadow
        interval = proportion(rows - agree, rows, tau=max(margin, 0.005), alpha=alpha)
        statistic = {**interval.to_dict(), "margin": margin, "rows": rows}
        if interval.low > margin:
            return _with(
                insufficient, f"disagrees on {interval.low:.4f} of rows at least", statistic, "FAIL"
            )
        if interval.high < margin:
            return _with(
                insufficient, f"disagrees on {interval.high:.4f} of rows at most", statistic, "PASS"
            )
        return _with(insufficient, f"undecided: disagreement {interval.estimate:.4f}", statistic)
    if name == "prediction_divergence":
        value, floor = evidence.divergence or (None, 0.0)
    else:
        value, floor = evidence.drifted_share, 0.0
    if value is None:
        return _with(insufficient, "no verdict from the monitor yet")
    limit = max(margin, floor)
    statistic = {"value": value, "limit": limit}
    if value > limit:
        return _with(insufficient, f"{name} {value:.4f} over {limit:.4f}", statistic, "FAIL")
    return _with(insufficient, f"{name} {value:.4f} within {limit:.4f}", statistic, "PASS")


def _with(
    base: CheckResult, reason: str, statistic: dict | None = None, outcome: Outcome = "INSUFFICIENT"
) -> CheckResult:
    return CheckResult(
        base.name, base.lane, outcome, reason, statistic or {}, base.required, base.acting
    )


def applies(comparison: Comparison, shadow_step: bool) -> bool:
    """Shadow agreement is judged in shadow steps, everything else in steps with traffic."""
    return (comparison.metric == "shadow_agreement") == shadow_step


def comparison_alpha(policy: RolloutPolicy, shadow_step: bool) -> float:
    """Each sequential comparison's share of the false-rollback budget (Bonferroni)."""
    rated = [c for c in policy.comparisons if c.metric in RATE_METRICS and applies(c, shadow_step)]
    return policy.alpha / max(len(rated), 1)
