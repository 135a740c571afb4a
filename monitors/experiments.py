"""The readout of an A/B experiment: which arm moved the metrics that matter, by how much, and how
sure we are. Pure numpy and scipy; the monitor feeds it per-unit totals from its store.

The unit of analysis is the unit of randomisation (a user, when the endpoint routes by key), so a
user's many requests are not counted as independent evidence. Each arm's metric is a ratio, the
sum of the values over the number of values of all its units (a per-request conversion rate, a
mean latency), with the delta method's variance over units (Deng, Lu and Litz, "Applying the
delta method in metric analytics", 2018); when each unit is one request it is the plain mean and
the sample variance, and every fixed-horizon number is Welch's t-test's.

Per treatment arm and metric the readout gives the absolute and relative lift with

- a fixed-horizon 95% interval and p-value (Welch), the p-values corrected for the number of
  metrics with Benjamini-Hochberg: right for one look at a planned sample size;
- an always-valid interval, a confidence sequence (the asymptotic confidence sequence of
  Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, 2021, with the difference-in-means variance
  plugged in): it covers the true lift at every look at once, so checking the readout every
  minute does not inflate false positives. Verdicts are drawn from it, each treatment's at its
  share of alpha (``Design.arm_alpha``).

plus a sample-ratio-mismatch test of units per arm against the weights the experiment started with
(a broken assignment invalidates everything else): flagged on an always-valid p-value, with
Pearson's chi-square beside it for one look; the minimum detectable effect at
the current sample size and the time still needed for the planned power, and a verdict following
Spotify's rule (Schultzberg, Kjellin and Rydberg, "Risk-aware product decisions in A/B tests with
multiple metrics", 2024): ship only when the primary metric improves significantly and every
guardrail is shown non-inferior within its margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["ship", "no_ship", "inconclusive"]
SHIP: Verdict = "ship"
"""The primary metric improved significantly and no guardrail may be worse than its margin."""
NO_SHIP: Verdict = "no_ship"
"""The primary metric got significantly worse, a guardrail is significantly beyond its margin,
or the assignment is broken (sample ratio mismatch)."""
INCONCLUSIVE: Verdict = "inconclusive"
"""Not yet either: more units are needed (the readout says how long at the current rate)."""

FIXED_LEVEL = 0.95
"""The fixed-horizon intervals' coverage."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric of an experiment: which way is better, and for a guardrail the margin (a share
    of the size of the control arm's mean, whatever its sign) by which a treatment may be worse and still ship."""

    name: str
    higher_is_better: bool = True
    margin: float | None = None
    """Set for guardrails only."""
    relative_margin: bool = True
    """The margin is a share of the control's mean, taken without its sign (else in the
    metric's own unit)."""


@dataclass(frozen=True)
class Design:
    """What the experiment compares and how it decides, fixed when it starts."""

    control: str
    treatments: tuple[str, ...]
    weights: Mapping[str, float]
    """Each arm's configured share of the traffic (the sample-ratio test expects it)."""
    primary: str
    metrics: tuple[MetricSpec, ...]
    alpha: float = 0.05
    power: float = 0.8
    minimum_detectable_effect: float = 0.05
    """The relative lift of the primary metric the experiment is sized to detect."""
    planned_units: int = 10_000
    """Units (all arms) where the always-valid interval is tuned to be narrowest."""
    min_units: int = 100
    """Units per arm before any interval is trusted (the normal approximation needs some)."""
    srm_alpha: float = 0.001

    @property
    def arms(self) -> tuple[str, ...]:
        return (self.control, *self.treatments)

    @property
    def arm_alpha(self) -> float:
        """Each treatment's share of ``alpha`` (Bonferroni, as Spotify's rule corrects for
        treatments): every arm ships on its own interval, so with the whole ``alpha`` each, an
        experiment whose ten treatments were no better shipped one in 5% of simulated runs."""
        return self.alpha / len(self.treatments)

    def metric(self, name: str) -> MetricSpec:
        return next(m for m in self.metrics if m.name == name)


@dataclass(frozen=True)
class UnitTotals:
    """One arm's data for one metric: per unit, the sum of its values and how many there are."""

    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, sums: Sequence[float], counts: Sequence[float]) -> UnitTotals:
        sums_, counts_ = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
        kept = counts_ > 0
        return cls(sums_[kept], counts_[kept])


@dataclass(frozen=True)
class ArmSummary:
    units: int
    values: int
    mean: float
    sd: float
    """Per unit: the standard error times the square root of the units."""
    variance_of_mean: float


def summarize(totals: UnitTotals) -> ArmSummary:
    """The arm's mean (sum over count) and its delta-method variance over units."""
    y, x = totals.sums, totals.counts
    n = len(x)
    if n == 0:
        return ArmSummary(0, 0, math.nan, math.nan, math.nan)
    mean = float(y.sum() / x.sum())
    if n < 2:
        return ArmSummary(n, int(x.sum()), mean, math.nan, math.nan)
    residuals = (y - mean * x) / x.mean()
    variance = float(residuals.var(ddof=1))
    return ArmSummary(n, int(x.sum()), mean, math.sqrt(variance), variance / n)


def sequence_multiplier(units: int | np.ndarray, alpha: float, planned_units: int) -> float:
    """The always-valid interval's half-width in standard errors after ``units`` units: the
    asymptotic confidence sequence's boundary, tuned to be narrowest at ``planned_units``
    (elementwise for an array of unit counts)."""
    log_inverse = -2 * math.log(alpha)
    rho_squared = (log_inverse + math.log(log_inverse + 1)) / planned_units
    spread = units * rho_squared + 1
    return np.sqrt(2 * spread / (units * rho_squared) * np.log(np.sqrt(spread) / alpha))


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float

    def to_list(self) -> list[float | None]:
        return [finite(self.lower), finite(self.upper)]


@dataclass(frozen=True)
class Lift:
    """A treatment against the control on one metric."""

    absolute: float
    relative: float
    fixed: Interval
    fixed_relative: Interval
    always_valid: Interval
    always_valid_relative: Interval
    p_value: float
    """Fixed-horizon, two-sided (Welch)."""
    standard_error: float
    degrees_of_freedom: float


def compare(
    control: ArmSummary, treatment: ArmSummary, alpha: float, planned_units: int
) -> Lift | None:
    """Welch's comparison of the means, with the relative lift by the delta method, and the
    always-valid intervals; None while either arm has fewer than two units."""
    if min(control.units, treatment.units) < 2:
        return None
    v_c, v_t = control.variance_of_mean, treatment.variance_of_mean
    diff = treatment.mean - control.mean
    se = math.sqrt(v_c + v_t)
    if se == 0:
        df = float(control.units + treatment.units - 2)
    else:
        df = se**4 / (v_c**2 / (control.units - 1) + v_t**2 / (treatment.units - 1))
    quantile = float(stats.t.ppf(0.5 + FIXED_LEVEL / 2, df))
    if se > 0:
        p_value = float(2 * stats.t.sf(abs(diff) / se, df))
    else:
        p_value = 1.0 if diff == 0 else 0.0
    base = control.mean
    # a share of the control's size: from -2 to -1 is +50% (better), whatever the mean's sign
    relative = diff / abs(base) if base else math.nan
    se_relative = math.sqrt(v_t / base**2 + treatment.mean**2 * v_c / base**4) if base else math.nan
    sequence = float(sequence_multiplier(control.units + treatment.units, alpha, planned_units))
    return Lift(
        absolute=diff,
        relative=relative,
        fixed=Interval(diff - quantile * se, diff + quantile * se),
        fixed_relative=Interval(
            relative - quantile * se_relative, relative + quantile * se_relative
        ),
        always_valid=Interval(diff - sequence * se, diff + sequence * se),
        always_valid_relative=Interval(
            relative - sequence * se_relative, relative + sequence * se_relative
        ),
        p_value=p_value,
        standard_error=se,
        degrees_of_freedom=df,
    )


@dataclass(frozen=True)
class SampleRatio:
    """Units per arm against the configured weights."""

    units: Mapping[str, int]
    expected_shares: Mapping[str, float]
    p_value: float
    """Always-valid (the flag's): safe however often the readout is looked at."""
    chi_square_p_value: float
    """Pearson's chi-square: right for one look at a planned sample size."""
    flagged: bool


SRM_PRIOR_UNITS = 100.0
"""The Dirichlet prior's concentration around the expected shares (in units) in the sequential
sample-ratio test: larger finds small mismatches in big samples sooner, gross ones later."""


def sequential_srm_p_value(counts: Sequence[int], shares: Sequence[float]) -> float:
    """The anytime-valid p-value of "units follow ``shares``": one over the Dirichlet-multinomial
    Bayes factor against the multinomial at the expected shares (Lindon and Malek, "Anytime-valid
    inference for multinomial count data", 2022). The factor is an e-process in the units, so the
    chance that this ever falls below alpha, at any look, is at most alpha (Pearson's chi-square
    looked at every 100 units flags a healthy experiment in 3.7% of runs by 1,000 looks)."""
    prior = [SRM_PRIOR_UNITS * share for share in shares]
    log_factor = math.lgamma(sum(prior)) - math.lgamma(sum(prior) + sum(counts))
    for count, share, a in zip(counts, shares, prior):
        log_factor += math.lgamma(a + count) - math.lgamma(a) - count * math.log(share)
    return math.exp(-log_factor) if log_factor > 0 else 1.0


def sample_ratio(
    units: Mapping[str, int], weights: Mapping[str, float], alpha: float
) -> SampleRatio:
    """The units each arm got against its share of the weights: flagged on the always-valid
    p-value, with Pearson's chi-square beside it. An arm of weight 0 (one the experiment did
    not start with) that got units is a mismatch outright."""
    total_weight = sum(weights.values())
    shares = {
        arm: weight / total_weight if total_weight else 0.0 for arm, weight in weights.items()
    }
    if any(units.get(arm, 0) for arm, share in shares.items() if share == 0):
        return SampleRatio(dict(units), shares, 0.0, 0.0, True)
    arms = [arm for arm, share in shares.items() if share > 0]
    counts = [units.get(arm, 0) for arm in arms]
    total = sum(counts)
    if total == 0 or len(arms) < 2:
        return SampleRatio(dict(units), shares, 1.0, 1.0, False)
    expected = [shares[arm] * total for arm in arms]
    chi_square = float(stats.chisquare(counts, expected).pvalue)
    p_value = sequential_srm_p_value(counts, [shares[arm] for arm in arms])
    return SampleRatio(dict(units), shares, p_value, chi_square, p_value < alpha)


@dataclass(frozen=True)
class MetricResult:
    """One treatment arm against the control on one metric."""

    metric: str
    role: Literal["primary", "guardrail", "secondary"]
    lift: Lift | None
    p_adjusted: float | None
    """Benjamini-Hochberg over the arm's metrics."""
    significant: bool
    """The always-valid interval excludes no change."""
    outcome: Literal["better", "worse", "non_inferior", "inferior", "unclear"]


@dataclass(frozen=True)
class Power:
    """How big an effect the primary metric's comparison can detect now, and when it will
    detect the planned one."""

    minimum_detectable_effect: float | None
    """Relative lift detectable now at the design's alpha and power (fixed horizon)."""
    units_needed: int | None
    """Units (all arms) at which the planned effect becomes detectable."""
    seconds_to_go: float | None
    """At the rate units arrived so far (units keep coming as users return: an estimate)."""


@dataclass(frozen=True)
class ArmReadout:
    arm: str
    verdict: Verdict
    reason: str
    results: tuple[MetricResult, ...]
    power: Power


@dataclass(frozen=True)
class Readout:
    design: Design
    summaries: Mapping[str, Mapping[str, ArmSummary]]
    """Metric -> arm -> its summary."""
    sample_ratio: SampleRatio
    arms: tuple[ArmReadout, ...]
    verdict: Verdict
    reason: str
    winner: str | None
    elapsed_s: float

    def to_dict(self) -> dict:
        design = asdict(self.design)
        design |= {
            "treatments": list(design["treatments"]),
            "metrics": list(design["metrics"]),
            "weights": dict(self.design.weights),
            "arm_alpha": self.design.arm_alpha,
        }
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "winner": self.winner,
            "elapsed_s": self.elapsed_s,
            "design": design,
            "sample_ratio": {
                "units": dict(self.sample_ratio.units),
                "expected_shares": dict(self.sample_ratio.expected_shares),
                "p_value": self.sample_ratio.p_value,
                "chi_square_p_value": self.sample_ratio.chi_square_p_value,
                "flagged": self.sample_ratio.flagged,
            },
            "metrics": {
                metric: {arm: _plain(asdict(summary)) for arm, summary in arms.items()}
                for metric, arms in self.summaries.items()
            },
            "arms": [_arm_dict(arm) for arm in self.arms],
        }


def _arm_dict(arm: ArmReadout) -> dict:
    return {
        "arm": arm.arm,
        "verdict": arm.verdict,
        "reason": arm.reason,
        "power": _plain(asdict(arm.power)),
        "metrics": [_result_dict(result) for result in arm.results],
    }


def _result_dict(result: MetricResult) -> dict:
    lift = result.lift
    described = {
        "metric": result.metric,
        "role": result.role,
        "significant": result.significant,
        "outcome": result.outcome,
        "p_value_adjusted": finite(result.p_adjusted),
    }
    if lift is None:
        return {**described, "lift": None}
    return {
        **described,
        "lift": {
            "absolute": finite(lift.absolute),
            "relative": finite(lift.relative),
            "fixed_interval": lift.fixed.to_list(),
            "fixed_interval_relative": lift.fixed_relative.to_list(),
            "always_valid_interval": lift.always_valid.to_list(),
            "always_valid_interval_relative": lift.always_valid_relative.to_list(),
            "p_value": finite(lift.p_value),
            "standard_error": finite(lift.standard_error),
            "degrees_of_freedom": finite(lift.degrees_of_freedom),
        },
    }


def readout(
    design: Design,
    units: Mapping[str, int],
    data: Mapping[str, Mapping[str, UnitTotals]],
    elapsed_s: float,
    broken: str | None = None,
) -> Readout:
    """The whole readout. ``units``: units exposed per arm (the sample-ratio test counts them);
    ``data``: metric -> arm -> per-unit totals (a metric may be missing, e.g. accuracy before
    any label); ``broken``: why the window no longer compares fixed treatments on a fixed
    assignment (the weights changed while it ran and units moved between arms, an arm's model
    changed), which no result survives whatever the counts say."""
    summaries = {
        metric: {arm: summarize(totals) for arm, totals in arms.items()}
        for metric, arms in data.items()
    }
    ratio = sample_ratio(units, design.weights, design.srm_alpha)
    arms = tuple(
        _judge_arm(design, arm, summaries, units, ratio, broken, elapsed_s)
        for arm in design.treatments
    )
    verdict, reason, winner = _overall(arms)
    return Readout(design, summaries, ratio, arms, verdict, reason, winner, elapsed_s)


def _judge_arm(
    design: Design,
    arm: str,
    summaries: Mapping[str, Mapping[str, ArmSummary]],
    units: Mapping[str, int],
    ratio: SampleRatio,
    broken: str | None,
    elapsed_s: float,
) -> ArmReadout:
    lifts = {}
    for spec in design.metrics:
        arms = summaries.get(spec.name, {})
        control, treatment = arms.get(design.control), arms.get(arm)
        enough = (
            control is not None
            and treatment is not None
            and min(control.units, treatment.units) >= design.min_units
        )
        lifts[spec.name] = (
            compare(control, treatment, design.arm_alpha, design.planned_units) if enough else None
        )
    tested = [name for name, lift in lifts.items() if lift is not None]
    adjusted = (
        dict(zip(tested, stats.false_discovery_control([lifts[n].p_value for n in tested])))
        if tested
        else {}
    )
    results = tuple(
        _result(design, spec, lifts[spec.name], adjusted.get(spec.name)) for spec in design.metrics
    )
    exposed = units.get(design.control, 0) + units.get(arm, 0)
    power = _power(design, lifts[design.primary], summaries, exposed, elapsed_s)
    verdict, reason = _verdict(design, arm, results, ratio, broken, units)
    return ArmReadout(arm, verdict, reason, results, power)


def _result(
    design: Design, spec: MetricSpec, lift: Lift | None, p_adjusted: float | None
) -> MetricResult:
    role = (
        "primary"
        if spec.name == design.primary
        else "guardrail"
        if spec.margin is not None
        else "secondary"
    )
    if lift is None:
        return MetricResult(spec.name, role, None, None, False, "unclear")
    sign = 1.0 if spec.higher_is_better else -1.0
    # the always-valid interval of the lift in the margin's terms, turned so that up is better
    interval = lift.always_valid_relative if spec.relative_margin else lift.always_valid
    good_low, good_high = sorted((sign * interval.lower, sign * interval.upper))
    significant = lift.always_valid.lower > 0 or lift.always_valid.upper < 0
    if spec.margin is not None:
        if good_low > -spec.margin:
            outcome = "non_inferior"
        elif good_high < -spec.margin:
            outcome = "inferior"
        else:
            outcome = "unclear"
    elif significant:
        outcome = "better" if sign * lift.absolute > 0 else "worse"
    else:
        outcome = "unclear"
    return MetricResult(spec.name, role, lift, p_adjusted, significant, outcome)


def _verdict(
    design: Design,
    arm: str,
    results: Sequence[MetricResult],
    ratio: SampleRatio,
    broken: str | None,
    units: Mapping[str, int],
) -> tuple[Verdict, str]:
    """Spotify's rule: ship on a significant improvement of the primary metric with every
    guardrail non-inferior; a broken assignment or a significant harm is no-ship."""
    if broken is not None:
        return NO_SHIP, (
            f"{broken}, so no result can be trusted; "
            "stop the experiment and start it again for a clean window"
        )
    if ratio.flagged:
        return NO_SHIP, (
            f"sample ratio mismatch (p = {ratio.p_value:.2g} < {design.srm_alpha}): units per arm "
            f"{dict(ratio.units)} do not follow the weights; the assignment is broken, so no "
            "result can be trusted"
        )
    short = [a for a in (design.control, arm) if units.get(a, 0) < design.min_units]
    if short:
        return INCONCLUSIVE, f"fewer than {design.min_units} units in {', '.join(short)} so far"
    primary = next(r for r in results if r.role == "primary")
    inferior = [r.metric for r in results if r.outcome == "inferior"]
    if primary.outcome == "worse":
        return NO_SHIP, f"the primary metric {primary.metric} got significantly worse"
    if inferior:
        return (
            NO_SHIP,
            f"guardrail(s) {', '.join(inferior)} are significantly worse than their margin",
        )
    unproven = [r.metric for r in results if r.role == "guardrail" and r.outcome != "non_inferior"]
    if primary.outcome != "better":
        return (
            INCONCLUSIVE,
            f"the primary metric {primary.metric} has not changed significantly yet",
        )
    if unproven:
        return INCONCLUSIVE, (
            f"{primary.metric} improved, but guardrail(s) {', '.join(unproven)} are not yet shown to be "
            f"within their margins{_unjudgeable(design, results)}"
        )
    return SHIP, (
        f"{primary.metric} improved significantly and every guardrail is within its margin"
    )


def _unjudgeable(design: Design, results: Sequence[MetricResult]) -> str:
    """Why a guardrail can never be shown within a margin relative to a control mean of 0 (a
    metric such as errors that the control never had): an operator waiting for it would wait
    for good."""
    zero = [
        r.metric
        for r in results
        if r.role == "guardrail"
        and design.metric(r.metric).relative_margin
        and r.lift is not None
        and math.isnan(r.lift.relative)
    ]
    if not zero:
        return ""
    return (
        f" ({', '.join(zero)}: the control's mean is 0, so a margin relative to it allows no "
        "change at all; give the guardrail an absolute margin, relative: false)"
    )


def _overall(arms: Sequence[ArmReadout]) -> tuple[Verdict, str, str | None]:
    """Ship the shipping arm that improved the primary metric most; no-ship when every arm is
    no-ship. Otherwise inconclusive, and the reason names an arm already found harmful too: the
    verdict is what an operator watches, and an arm that hurts users should be switched off now,
    not when the others are decided."""
    shipping = [a for a in arms if a.verdict == SHIP]
    if shipping:
        best = max(shipping, key=_improvement)
        return SHIP, f"ship {best.arm}: {best.reason}", best.arm
    if arms and all(a.verdict == NO_SHIP for a in arms):
        return NO_SHIP, "; ".join(f"{a.arm}: {a.reason}" for a in arms), None
    waiting = [f"{a.arm}: {a.reason}" for a in arms if a.verdict == INCONCLUSIVE]
    harmful = [f"{a.arm} (no_ship): {a.reason}" for a in arms if a.verdict == NO_SHIP]
    return INCONCLUSIVE, "; ".join(waiting + harmful), None


def _primary(arm: ArmReadout) -> MetricResult:
    return next(r for r in arm.results if r.role == "primary")


def _improvement(arm: ArmReadout) -> float:
    """How much a shipping arm improved the primary metric, comparable across arms as they share
    the control: the size of its absolute lift, which points the better way in every shipping
    arm. The relative lift ranked a lower-is-better metric's smallest cut first, and is undefined
    where the control's mean is 0 (a metric only the treatments can move)."""
    return abs(_primary(arm).lift.absolute)  # type: ignore[union-attr]


def _power(
    design: Design,
    lift: Lift | None,
    summaries: Mapping[str, Mapping[str, ArmSummary]],
    exposed: int,
    elapsed_s: float,
) -> Power:
    """What the verdict can find: the effect its always-valid interval excludes zero for with
    the design's power, now and after more units. The fixed-horizon formula (z_{1-alpha/2} +
    z_power standard errors) promised 80% power at units where the always-valid interval, about
    1.6 times as wide, found the planned effect in 28% of simulated runs."""
    control = summaries.get(design.primary, {}).get(design.control)
    if lift is None or control is None or not control.mean or lift.standard_error == 0:
        return Power(None, None, None)
    z_power = float(stats.norm.ppf(design.power))

    def detectable(units: int) -> float:
        """The relative effect found with the design's power after ``units`` units (the
        standard error falls as one over the square root of the units)."""
        boundary = sequence_multiplier(units, design.arm_alpha, design.planned_units)
        standard_error = lift.standard_error * math.sqrt(exposed / units)
        return float((boundary + z_power) * standard_error / abs(control.mean))

    needed = _fewest_units(lambda units: detectable(units) <= design.minimum_detectable_effect)
    rate = exposed / elapsed_s if elapsed_s > 0 else 0.0
    to_go = max(0.0, (needed - exposed) / rate) if rate > 0 and needed is not None else None
    return Power(detectable(exposed), needed, to_go)


MOST_UNITS = 10**12
"""Past this many units an experiment will never end: no figure is given."""


def _fewest_units(enough: Callable[[int], bool]) -> int | None:
    """The fewest units (at least 2) for which ``enough`` holds, for a condition that stays
    true once it holds (the detectable effect only falls as units grow); None past
    ``MOST_UNITS``."""
    if not enough(MOST_UNITS):
        return None
    low, high = 1, MOST_UNITS  # enough(high) holds; enough(low) is taken not to
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null (and numpy floats plain floats)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _plain(values: dict) -> dict:
    return {k: finite(v) if isinstance(v, float) else v for k, v in values.items()}
