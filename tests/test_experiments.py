"""The experiment readout's statistics: fixed-horizon numbers equal scipy's and statsmodels',
the always-valid interval keeps its promise under peeking (A/A simulations with heavy tails and
clustered users), injected lifts are found and covered, sample-ratio mismatch fires when it
should and only then, and verdicts follow the rule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import special, stats
from statsmodels.stats.multitest import multipletests

from monitors.experiments import (
    INCONCLUSIVE,
    NO_SHIP,
    SHIP,
    SRM_PRIOR_UNITS,
    Design,
    MetricSpec,
    UnitTotals,
    compare,
    readout,
    sample_ratio,
    sequence_multiplier,
    sequential_srm_p_value,
    summarize,
)

ALPHA = 0.05
PLANNED = 10_000


def plain(values) -> UnitTotals:
    """One value per unit (an endpoint without a routing key: the unit is the request)."""
    return UnitTotals.of(values, np.ones(len(values)))


def test_rewards_as_large_as_the_gateway_takes_keep_the_arithmetic_finite():
    """One reward of 1e160 (a finite number; anyone may post rewards for their own answers)
    overflowed the comparison's squares and failed the readout on every run."""
    from service.codecs import MAX_MAGNITUDE

    rng = np.random.default_rng(3)
    control, treatment = rng.lognormal(3, 1, 5000), rng.lognormal(3, 1, 5000)
    treatment[:3], control[:2] = MAX_MAGNITUDE, -MAX_MAGNITUDE
    lift = compare(summarize(plain(control)), summarize(plain(treatment)), ALPHA, PLANNED)
    bounds = [*lift.always_valid_relative.to_list(), *lift.always_valid.to_list()]
    assert (
        all(math.isfinite(b) for b in bounds)
        and lift.always_valid.lower < 0 < lift.always_valid.upper
    )


def test_fixed_horizon_numbers_are_welchs():
    rng = np.random.default_rng(1)
    control, treatment = rng.lognormal(0, 1, 400), rng.lognormal(0.1, 1.2, 650)
    lift = compare(summarize(plain(control)), summarize(plain(treatment)), ALPHA, PLANNED)
    expected = stats.ttest_ind(treatment, control, equal_var=False)
    assert lift.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert lift.degrees_of_freedom == pytest.approx(expected.df, rel=1e-9)
    interval = expected.confidence_interval(0.95)
    assert lift.fixed.lower == pytest.approx(interval.low, rel=1e-9)
    assert lift.fixed.upper == pytest.approx(interval.high, rel=1e-9)
    assert lift.absolute == pytest.approx(treatment.mean() - control.mean())
    assert lift.relative == pytest.approx(treatment.mean() / control.mean() - 1)
    summary = summarize(plain(control))
    assert summary.sd == pytest.approx(control.std(ddof=1))
    assert summary.units == 400


def test_ratio_metric_is_the_delta_method_over_units():
    """Units with several requests: the mean is per request, the variance per unit."""
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 8, 300)
    sums = rng.binomial(counts, 0.3).astype(float)
    summary = summarize(UnitTotals.of(sums, counts))
    mean = sums.sum() / counts.sum()
    assert summary.mean == pytest.approx(mean)
    # Deng et al.: Var(R) = (s_yy - 2 R s_xy + R^2 s_xx) / (n mean_x^2)
    cov = np.cov(sums, counts, ddof=1)
    delta = (cov[0, 0] - 2 * mean * cov[0, 1] + mean**2 * cov[1, 1]) / (300 * counts.mean() ** 2)
    assert summary.variance_of_mean == pytest.approx(delta)
    assert summary.values == counts.sum()


def test_units_without_values_do_not_count():
    summary = summarize(UnitTotals.of([1.0, 0.0, 2.0], [1, 0, 1]))
    assert summary.units == 2 and summary.mean == 1.5


def test_benjamini_hochberg_matches_statsmodels():
    rng = np.random.default_rng(3)
    arms = {"a": 0.10, "b": 0.11}
    metrics = ("m0", "m1", "m2", "m3")
    data = {
        m: {arm: plain(rng.binomial(1, rate + 0.01 * i, 3000)) for arm, rate in arms.items()}
        for i, m in enumerate(metrics)
    }
    design = Design("a", ("b",), {"a": 50, "b": 50}, "m0", tuple(MetricSpec(m) for m in metrics))
    result = readout(design, {"a": 3000, "b": 3000}, data, 600.0)
    (arm,) = result.arms
    raw = [r.lift.p_value for r in arm.results]
    expected = multipletests(raw, method="fdr_bh")[1]
    assert [r.p_adjusted for r in arm.results] == pytest.approx(list(expected))


def test_sample_ratio_gives_pearsons_chi_square_and_the_dirichlet_multinomial_factor():
    ratio = sample_ratio({"a": 5100, "b": 4900}, {"a": 50, "b": 50}, 0.001)
    assert ratio.chi_square_p_value == pytest.approx(stats.chisquare([5100, 4900]).pvalue)
    assert not ratio.flagged
    skewed = sample_ratio({"a": 2000, "b": 8100}, {"a": 20, "b": 80}, 0.001)
    expected = stats.chisquare([2000, 8100], [0.2 * 10100, 0.8 * 10100]).pvalue
    assert skewed.chi_square_p_value == pytest.approx(expected)
    # two arms: the Bayes factor of a Beta(k p, k (1 - p)) mixture against the point null
    k, n_a, n_b = SRM_PRIOR_UNITS, 2000, 8100
    log_factor = (
        special.betaln(k * 0.2 + n_a, k * 0.8 + n_b)
        - special.betaln(k * 0.2, k * 0.8)
        - n_a * math.log(0.2)
        - n_b * math.log(0.8)
    )
    assert skewed.p_value == pytest.approx(min(1.0, math.exp(-log_factor)))
    assert sequential_srm_p_value([50, 50], [0.5, 0.5]) == 1.0


def test_a_three_percent_exposure_loss_fires_srm_and_balanced_traffic_does_not():
    rng = np.random.default_rng(4)
    users = 300_000  # the always-valid test needs more units than one chi-square: ~99.6% at 200,000
    fired_on_loss, fired_on_balance = 0, 0
    for _ in range(200):
        arm_b = rng.random(users) < 0.5
        lost = arm_b & (rng.random(users) < 0.03)  # 3% of arm b's exposures never logged
        kept_b = int(arm_b.sum() - lost.sum())
        balanced = sample_ratio({"a": int((~arm_b).sum()), "b": int(arm_b.sum())}, WEIGHTS, 0.001)
        lossy = sample_ratio({"a": int((~arm_b).sum()), "b": kept_b}, WEIGHTS, 0.001)
        fired_on_balance += balanced.flagged
        fired_on_loss += lossy.flagged
    assert fired_on_loss >= 198
    assert fired_on_balance <= 2  # 0.1% expected


WEIGHTS = {"a": 50.0, "b": 50.0}


def test_units_in_an_arm_the_experiment_did_not_start_with_are_a_sample_ratio_mismatch():
    """An arm added to gateway.yaml mid-experiment joined the window late (weight 0 here): its
    units, compared with the control's from the start, would mix in whatever changed over time."""
    added = sample_ratio({"a": 500, "b": 480, "c": 7}, {"a": 50, "b": 50, "c": 0}, 0.001)
    assert added.flagged and added.p_value == 0 and added.expected_shares["c"] == 0
    quiet = sample_ratio({"a": 500, "b": 480}, {"a": 50, "b": 50, "c": 0}, 0.001)
    assert not quiet.flagged and quiet.p_value > 0.001
    renamed = sample_ratio({"a": 500, "b": 480}, {"a": 0, "b": 0}, 0.001)
    assert renamed.flagged


def test_the_sample_ratio_flag_keeps_its_level_however_often_it_is_looked_at():
    """1,000 balanced experiments looked at every 100 units for 300 looks: the always-valid flag
    fires in at most 0.1% of them, where Pearson's chi-square at p < 0.001 fires in several
    times that (its level holds for one look only)."""
    rng = np.random.default_rng(15)
    looks, per = 300, 100
    arm_a = np.cumsum(rng.binomial(per, 0.5, (1000, looks)), axis=1)
    n = np.arange(1, looks + 1) * per
    sequential = [
        any(
            sequential_srm_p_value([int(a), int(t - a)], [0.5, 0.5]) < 0.001 for a, t in zip(row, n)
        )
        for row in arm_a
    ]
    z = (arm_a - n / 2) / np.sqrt(n / 4)
    chi_square = (2 * stats.norm.sf(np.abs(z)) < 0.001).any(axis=1)
    assert np.mean(sequential) <= 0.001
    assert np.mean(chi_square) > 3 * max(np.mean(sequential), 0.001)


def _peeking_false_positives(
    rng: np.random.Generator, draw, sims: int, looks: int, per_look: int
) -> tuple[float, float]:
    """Share of A/A experiments (both arms from ``draw``) whose always-valid interval, looked at
    after every ``per_look`` units per arm, ever excluded zero; and the same for the
    fixed-horizon interval looked at as often (the mistake the always-valid one prevents).
    Vectorised over simulations; ``compare`` is checked to give the same numbers below."""
    arms = []
    for _ in range(2):
        sums, counts = draw((sims, looks * per_look))
        arms.append(
            [np.cumsum(a, axis=1)[:, per_look - 1 :: per_look] for a in _moments(sums, counts)]
        )
    n = np.arange(1, looks + 1) * per_look
    variances = []
    means = []
    for y, x, yy, xx, xy in arms:
        mean = y / x
        residual = (yy - 2 * mean * xy + mean**2 * xx) / (n - 1) / (x / n) ** 2
        means.append(mean)
        variances.append(residual / n)
    diff = means[1] - means[0]
    se = np.sqrt(variances[0] + variances[1])
    always = np.abs(diff) > sequence_multiplier(2 * n, ALPHA, PLANNED) * se
    fixed = np.abs(diff) > 1.96 * se
    return float(always.any(axis=1).mean()), float(fixed.any(axis=1).mean())


def _moments(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    return sums, counts, sums * sums, counts * counts, sums * counts


def _binary(rng, p):
    return lambda shape: (rng.binomial(1, p, shape).astype(float), np.ones(shape))


def _heavy_tailed(rng):
    """Revenue per user: most spend nothing, spenders' amounts are lognormal with sigma 2."""

    def draw(shape):
        spends = rng.random(shape) < 0.05
        return np.where(spends, rng.lognormal(3, 2, shape), 0.0), np.ones(shape)

    return draw


def _clustered(rng):
    """Users who come back 1 to 20 times, each with a conversion propensity of their own."""

    def draw(shape):
        counts = rng.integers(1, 21, shape).astype(float)
        propensity = rng.beta(1, 9, shape)
        return rng.binomial(counts.astype(int), propensity).astype(float), counts

    return draw


@pytest.mark.parametrize(
    "shape",
    ["binary", "binary rare", "heavy tailed", "clustered users"],
)
def test_a_a_peeking_after_every_batch_keeps_the_false_positive_rate(shape):
    """1,000 A/A experiments, each looked at 60 times (every 100 units per arm, from the
    minimum sample on): the always-valid interval excludes zero in at most alpha of them."""
    rng = np.random.default_rng(5)
    draw = {
        "binary": _binary(rng, 0.1),
        "binary rare": _binary(rng, 0.01),
        "heavy tailed": _heavy_tailed(rng),
        "clustered users": _clustered(rng),
    }[shape]
    always, fixed = _peeking_false_positives(rng, draw, sims=1000, looks=60, per_look=100)
    assert always <= ALPHA, f"{shape}: always-valid false positives {always:.3f}"
    assert fixed > 2 * ALPHA, f"{shape}: peeking at a fixed interval should mislead ({fixed:.3f})"


def test_the_vectorised_simulation_computes_what_compare_does():
    rng = np.random.default_rng(6)
    sums_a, counts_a = _clustered(rng)((1, 300))
    sums_b, counts_b = _clustered(rng)((1, 300))
    lift = compare(
        summarize(UnitTotals.of(sums_a[0], counts_a[0])),
        summarize(UnitTotals.of(sums_b[0], counts_b[0])),
        ALPHA,
        PLANNED,
    )
    mean_a, mean_b = sums_a.sum() / counts_a.sum(), sums_b.sum() / counts_b.sum()
    variances = []
    for sums, counts, mean in ((sums_a, counts_a, mean_a), (sums_b, counts_b, mean_b)):
        yy, xx, xy = (sums * sums).sum(), (counts * counts).sum(), (sums * counts).sum()
        variances.append((yy - 2 * mean * xy + mean**2 * xx) / 299 / (counts.mean()) ** 2 / 300)
    se = math.sqrt(sum(variances))
    assert lift.standard_error == pytest.approx(se)
    half = sequence_multiplier(600, ALPHA, PLANNED) * se
    assert lift.always_valid.upper - lift.absolute == pytest.approx(half)


def test_an_injected_lift_is_found_and_covered_at_the_nominal_rate():
    """Conversion 10% against 11.5%: over 1,000 experiments of 20,000 units per arm the fixed 95%
    interval covers the true lift about 95% of the time, the always-valid one at every look at
    least that often, and the lift is declared in most of them."""
    rng = np.random.default_rng(7)
    sims, looks, per_look = 1000, 40, 500
    n = np.arange(1, looks + 1) * per_look
    control = np.cumsum(rng.binomial(1, 0.10, (sims, looks * per_look)), axis=1)[
        :, per_look - 1 :: per_look
    ]
    treated = np.cumsum(rng.binomial(1, 0.115, (sims, looks * per_look)), axis=1)[
        :, per_look - 1 :: per_look
    ]
    p_c, p_t = control / n, treated / n
    se = np.sqrt(p_c * (1 - p_c) / (n - 1) + p_t * (1 - p_t) / (n - 1))
    diff = p_t - p_c
    truth = 0.015
    fixed_covered = (np.abs(diff[:, -1] - truth) <= 1.96 * se[:, -1]).mean()
    always_half = sequence_multiplier(2 * n, ALPHA, PLANNED) * se
    always_covered = (np.abs(diff - truth) <= always_half).all(axis=1).mean()
    detected = (diff - always_half > 0).any(axis=1).mean()
    assert 0.93 <= fixed_covered <= 0.97
    assert always_covered >= 0.95
    assert detected >= 0.9


def _design(**overrides) -> Design:
    metrics = (
        MetricSpec("converted"),
        MetricSpec("error_rate", higher_is_better=False, margin=0.5),
        MetricSpec("latency", higher_is_better=False, margin=0.2),
    )
    return Design(
        **{
            "control": "a",
            "treatments": ("b",),
            "weights": WEIGHTS,
            "primary": "converted",
            "metrics": metrics,
            **overrides,
        }
    )


def _data(rng, units: int, rates: dict, latency: dict, errors: dict) -> dict:
    return {
        "converted": {arm: plain(rng.binomial(1, p, units)) for arm, p in rates.items()},
        "error_rate": {arm: plain(rng.binomial(1, p, units)) for arm, p in errors.items()},
        "latency": {arm: plain(rng.gamma(4, m / 4, units)) for arm, m in latency.items()},
    }


def test_verdict_ship_when_the_primary_improves_and_guardrails_hold():
    rng = np.random.default_rng(8)
    data = _data(rng, 20_000, {"a": 0.10, "b": 0.13}, {"a": 20, "b": 20}, {"a": 0.02, "b": 0.02})
    result = readout(_design(), {"a": 20_000, "b": 20_000}, data, 3600.0)
    assert result.verdict == SHIP and result.winner == "b", result.reason
    (arm,) = result.arms
    assert {r.metric: r.outcome for r in arm.results} == {
        "converted": "better",
        "error_rate": "non_inferior",
        "latency": "non_inferior",
    }
    primary = arm.results[0].lift
    assert primary.always_valid.lower < primary.fixed.lower < primary.absolute
    assert primary.fixed_relative.lower < 0.3 < primary.fixed_relative.upper


@pytest.mark.parametrize(
    "case, rates, latency, exposed, named",
    [
        ("a guardrail beyond its margin", (0.10, 0.13), (20, 30), (20_000, 20_000), "latency"),
        ("the primary metric worse", (0.13, 0.10), (20, 20), (20_000, 20_000), "converted"),
        ("a sample ratio mismatch", (0.10, 0.13), (20, 20), (20_000, 19_000), "sample ratio"),
    ],
)
def test_verdict_no_ship(case, rates, latency, exposed, named):
    rng = np.random.default_rng(9)
    data = _data(rng, 20_000, dict(zip("ab", rates)), dict(zip("ab", latency)), ERRORS)
    result = readout(_design(), dict(zip("ab", exposed)), data, 3600.0)
    assert result.verdict == NO_SHIP and named in result.reason, case
    if case == "a guardrail beyond its margin":  # named as words, not a Python list
        assert "guardrail(s) latency are" in result.reason, result.reason
    assert result.sample_ratio.flagged == (case == "a sample ratio mismatch")


ERRORS = {"a": 0.02, "b": 0.02}


def _profit(rng, units: int, means: dict) -> dict:
    """A continuous reward that is often negative (a margin after refunds), per unit."""
    return {arm: plain(rng.normal(mean, 3.0, units)) for arm, mean in means.items()}


@pytest.mark.parametrize(
    "treatment_mean, outcome, verdict",
    [(-1.0, "non_inferior", SHIP), (-3.0, "inferior", NO_SHIP)],
)
def test_a_relative_guardrail_on_a_metric_below_zero_judges_worse_as_worse(
    treatment_mean, outcome, verdict
):
    """A relative lift is a share of the control's mean whatever its sign: from -2 to -1 is
    +50%, better. Divided by the signed mean it read -50%: a treatment that halved the losses
    was "inferior" and blocked, and one that made them half again as large was shipped."""
    rng = np.random.default_rng(31)
    design = _design(
        metrics=(MetricSpec("converted"), MetricSpec("profit", margin=0.1)),
    )
    data = {
        "converted": {
            "a": plain(rng.binomial(1, 0.10, 20_000)),
            "b": plain(rng.binomial(1, 0.13, 20_000)),
        },
        "profit": _profit(rng, 20_000, {"a": -2.0, "b": treatment_mean}),
    }
    result = readout(design, {"a": 20_000, "b": 20_000}, data, 3600.0)
    (guardrail,) = [r for r in result.arms[0].results if r.metric == "profit"]
    assert np.sign(guardrail.lift.relative) == np.sign(treatment_mean + 2.0)
    assert guardrail.outcome == outcome
    assert result.verdict == verdict, result.reason


def test_with_a_primary_metric_below_zero_the_arm_that_improved_it_most_wins():
    rng = np.random.default_rng(32)
    design = _design(
        treatments=("b", "c"),
        weights={"a": 1.0, "b": 1.0, "c": 1.0},
        primary="profit",
        metrics=(MetricSpec("profit"),),
    )
    data = {"profit": _profit(rng, 20_000, {"a": -2.0, "b": -1.5, "c": -1.0})}
    result = readout(design, {"a": 20_000, "b": 20_000, "c": 20_000}, data, 3600.0)
    assert [arm.verdict for arm in result.arms] == [SHIP, SHIP]
    assert result.winner == "c", result.reason


@pytest.mark.parametrize(
    "metric, means",
    [
        (MetricSpec("latency", higher_is_better=False), {"a": 20.0, "b": 18.0, "c": 14.0}),
        (MetricSpec("clicks"), {"a": 0.0, "b": 0.02, "c": 0.05}),
    ],
    ids=["lower is better", "the control's mean is 0"],
)
def test_of_two_shipping_arms_the_one_that_improved_the_primary_metric_most_wins(metric, means):
    """Ranked by the relative lift, the arm that cut latency by 10% won over the one that cut it
    by 30%, and a metric only the treatments can move (a new button's clicks) chose at random."""
    rng = np.random.default_rng(34)
    design = _design(
        treatments=("b", "c"),
        weights={"a": 1.0, "b": 1.0, "c": 1.0},
        primary=metric.name,
        metrics=(metric,),
    )
    draw = {
        "latency": lambda mean: rng.gamma(4, mean / 4, 20_000),
        "clicks": lambda mean: rng.binomial(1, mean, 20_000).astype(float),
    }[metric.name]
    data = {metric.name: {arm: plain(draw(mean)) for arm, mean in means.items()}}
    result = readout(design, dict.fromkeys("abc", 20_000), data, 3600.0)
    assert [arm.verdict for arm in result.arms] == [SHIP, SHIP], result.reason
    assert result.winner == "c", result.reason


def test_a_relative_guardrail_on_a_control_mean_of_0_says_it_can_never_be_judged():
    """Errors the control never had: no treatment can be shown within a margin relative to 0,
    so the readout would stay inconclusive for good; it says why and what to set instead."""
    rng = np.random.default_rng(35)
    design = _design(
        metrics=(MetricSpec("converted"), MetricSpec("errors", higher_is_better=False, margin=0.5))
    )
    data = {
        "converted": {
            "a": plain(rng.binomial(1, 0.10, 20_000)),
            "b": plain(rng.binomial(1, 0.13, 20_000)),
        },
        "errors": {"a": plain(np.zeros(20_000)), "b": plain(np.zeros(20_000))},
    }
    result = readout(design, dict.fromkeys("ab", 20_000), data, 3600.0)
    assert result.verdict == INCONCLUSIVE
    assert "errors: the control's mean is 0" in result.reason
    assert "absolute margin, relative: false" in result.reason
    absolute = replace(
        design, metrics=(design.metrics[0], replace(design.metrics[1], relative_margin=False))
    )
    assert readout(absolute, dict.fromkeys("ab", 20_000), data, 3600.0).verdict == SHIP


def test_an_inconclusive_readout_names_an_arm_already_found_harmful():
    """Two treatments, one undecided and one 50% slower: the verdict stays inconclusive (b may
    still win), and its reason says c should go now; it named only the undecided arm."""
    rng = np.random.default_rng(12)
    design = _design(treatments=("b", "c"), weights={"a": 1.0, "b": 1.0, "c": 1.0})
    data = _data(
        rng,
        20_000,
        {"a": 0.10, "b": 0.10, "c": 0.10},
        {"a": 20, "b": 20, "c": 30},
        {"a": 0.02, "b": 0.02, "c": 0.02},
    )
    result = readout(design, {"a": 20_000, "b": 20_000, "c": 20_000}, data, 3600.0)
    assert [arm.verdict for arm in result.arms] == [INCONCLUSIVE, NO_SHIP]
    assert result.verdict == INCONCLUSIVE
    assert "b: the primary metric converted has not changed" in result.reason
    assert "c (no_ship): guardrail(s) latency are significantly worse" in result.reason


def test_ten_treatments_looked_at_often_ship_one_no_better_than_the_control_rarely():
    """500 experiments with ten treatments, none better than the control, looked at 60 times:
    one is shipped (its always-valid interval wholly above zero) in at most alpha / 2. Each arm
    ships on its own interval; at the whole alpha each, this shipped one in 5% of them."""
    rng = np.random.default_rng(33)
    sims, looks, per_look, treatments = 500, 60, 100, 10
    design = Design("a", tuple(f"t{i}" for i in range(treatments)), {}, "converted", ())
    n = np.arange(1, looks + 1) * per_look

    def rates() -> np.ndarray:
        conversions = rng.binomial(1, 0.1, (sims, looks * per_look)).astype(np.int32)
        return np.cumsum(conversions, axis=1)[:, per_look - 1 :: per_look] / n

    control = rates()
    boundary = sequence_multiplier(2 * n, design.arm_alpha, PLANNED)
    shipped = np.zeros(sims, dtype=bool)
    for _ in range(treatments):
        treated = rates()
        se = np.sqrt((control * (1 - control) + treated * (1 - treated)) / (n - 1))
        shipped |= (treated - control > boundary * se).any(axis=1)
    assert shipped.mean() <= ALPHA / 2, shipped.mean()


def test_evidence_that_ships_an_arm_alone_does_not_ship_it_among_ten_treatments():
    """The readout judges each arm at its share of alpha: a lift just past the boundary at the
    whole alpha ships a lone treatment, and beside nine arms like the control it does not yet."""
    units = 20_000
    design = Design("a", ("b",), WEIGHTS, "converted", (MetricSpec("converted"),))

    def converting(count: int) -> UnitTotals:
        return plain(np.repeat([1.0, 0.0], [count, units - count]))

    control = converting(2_000)
    treated = next(
        converting(count)
        for count in range(2_000, 3_000)
        if compare(
            summarize(control), summarize(converting(count)), ALPHA, PLANNED
        ).always_valid.lower
        > 0
    )
    alone = readout(
        design, dict.fromkeys("ab", units), {"converted": {"a": control, "b": treated}}, 60.0
    )
    assert alone.verdict == SHIP, alone.reason
    others = tuple(f"c{i}" for i in range(9))
    arms = ("a", "b", *others)
    among = readout(
        replace(design, treatments=arms[1:], weights=dict.fromkeys(arms, 1.0)),
        dict.fromkeys(arms, units),
        {"converted": {"a": control, "b": treated, **dict.fromkeys(others, control)}},
        60.0,
    )
    assert [arm.verdict for arm in among.arms] == [INCONCLUSIVE] * 10, among.reason
    assert among.to_dict()["design"]["arm_alpha"] == pytest.approx(ALPHA / 10)


def test_verdict_inconclusive_with_few_units_or_no_effect():
    rng = np.random.default_rng(11)
    few = _data(rng, 50, {"a": 0.1, "b": 0.5}, {"a": 20, "b": 20}, {"a": 0.0, "b": 0.0})
    result = readout(_design(), {"a": 50, "b": 50}, few, 60.0)
    assert result.verdict == INCONCLUSIVE and "fewer than 100 units in a, b so far" in result.reason
    assert result.arms[0].results[0].lift is None
    same = _data(rng, 5000, {"a": 0.1, "b": 0.1}, {"a": 20, "b": 20}, {"a": 0.02, "b": 0.02})
    result = readout(_design(), {"a": 5000, "b": 5000}, same, 600.0)
    assert result.verdict == INCONCLUSIVE and "not changed significantly" in result.reason


def test_power_says_what_is_detectable_now_and_how_long_until_the_planned_effect():
    rng = np.random.default_rng(13)
    data = _data(rng, 2000, {"a": 0.10, "b": 0.10}, {"a": 20, "b": 20}, {"a": 0.02, "b": 0.02})
    design = _design(minimum_detectable_effect=0.05)
    result = readout(design, {"a": 2000, "b": 2000}, data, 400.0)
    power = result.arms[0].power
    lift = result.arms[0].results[0].lift
    # the verdict's own boundary, not the fixed horizon's z_{1-alpha/2}
    boundary = sequence_multiplier(4000, ALPHA, PLANNED) + stats.norm.ppf(0.8)
    control_mean = result.summaries["converted"]["a"].mean
    assert power.minimum_detectable_effect == pytest.approx(
        boundary * lift.standard_error / control_mean
    )
    # a fixed-horizon test would need about 2 x 57,000 units for a 5% lift on a 10% rate
    assert 200_000 < power.units_needed < 400_000
    assert power.seconds_to_go == pytest.approx((power.units_needed - 4000) / (4000 / 400.0))
    assert result.to_dict()["arms"][0]["power"]["units_needed"] == power.units_needed


def _conversions(rng, units: int, rates: dict) -> dict:
    """Per-request conversions of ``units`` units per arm, drawn as one binomial count each."""
    data = {}
    for arm, rate in rates.items():
        converted = np.zeros(units)
        converted[: rng.binomial(units, rate)] = 1.0
        data[arm] = plain(converted)
    return {"converted": data}


def test_at_the_units_the_readout_asks_for_the_verdict_finds_the_planned_effect_with_its_power():
    """The promise an operator plans by: run to ``units_needed`` and a real lift of
    ``minimum_detectable_effect`` comes out "better" in about ``power`` of experiments. Sized
    with the fixed-horizon formula, it came out in 28% (the verdict reads the wider always-valid
    interval). And an effect of the size ``minimum_detectable_effect`` says is detectable now is
    found now with the same power."""
    rng = np.random.default_rng(21)
    design = Design("a", ("b",), WEIGHTS, "converted", (MetricSpec("converted"),))
    rates = {"a": 0.10, "b": 0.10 * (1 + design.minimum_detectable_effect)}
    pilot_units = 200_000  # its control mean is then within about 1% of the rate
    pilot = readout(
        design, {"a": pilot_units, "b": pilot_units}, _conversions(rng, pilot_units, rates), 60.0
    )
    needed = pilot.arms[0].power.units_needed
    detectable_now = pilot.arms[0].power.minimum_detectable_effect

    def found(units: int, rates: dict) -> float:
        runs = 300
        better = 0
        for _ in range(runs):
            data = _conversions(rng, units, rates)
            result = readout(design, {"a": units, "b": units}, data, 60.0)
            better += result.arms[0].results[0].outcome == "better"
        return better / runs

    assert 0.72 <= found(needed // 2, rates) <= 0.88
    assert 0.72 <= found(pilot_units, {"a": 0.10, "b": 0.10 * (1 + detectable_now)}) <= 0.88


def test_the_readout_is_plain_json():
    import json

    rng = np.random.default_rng(14)
    data = _data(rng, 20, {"a": 0.1, "b": 0.1}, {"a": 20, "b": 20}, {"a": 0.0, "b": 0.0})
    document = readout(_design(), {"a": 20, "b": 20}, data, 1.0).to_dict()
    assert json.loads(json.dumps(document, allow_nan=False)) == document
