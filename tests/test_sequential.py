"""The always-valid tests (pure): under the null hypothesis their e-values reach 1/alpha at most
alpha of the time however often they are looked at; a fixed-horizon test looked at as often does
not; the null's best fit is found exactly; a total failure needs only a handful of samples; the
quantile bound built on them stays above the true quantile at every look, whatever the tail."""

from __future__ import annotations

import numpy as np
import pytest

from traffic.sequential import (
    RARE,
    BetaPrior,
    _boundary_maximum,
    log_likelihood,
    one_arm,
    quantile_upper_rank,
    threshold,
    two_arms,
)

ALPHA = 0.05


def _ever_rejects(evalues) -> bool:
    return any(e >= threshold(ALPHA) for e in evalues)


@pytest.mark.parametrize(("rate", "bound"), [(0.05, 0.05), (0.01, 0.05), (0.5, 0.5), (0.001, 0.01)])
def test_one_arm_keeps_alpha_under_repeated_looks(rate, bound):
    rng = np.random.default_rng(7)
    sequences, looks = 1500, np.arange(5, 2001, 25)
    rejected = 0
    for _ in range(sequences):
        events = np.cumsum(rng.random(looks[-1]) < rate)
        rejected += _ever_rejects(one_arm(int(events[n - 1]), int(n), bound) for n in looks)
    assert rejected / sequences <= ALPHA


def test_two_arms_keep_alpha_on_the_boundary_with_a_nuisance_rate():
    rng = np.random.default_rng(11)
    margin, stable_rate = 0.01, 0.02
    sequences, rejected = 400, 0
    for _ in range(sequences):
        candidate = np.cumsum(rng.random(3000) < stable_rate + margin)  # exactly on H0's edge
        stable = np.cumsum(rng.random(60_000) < stable_rate)
        before = BetaPrior.informed(int(rng.binomial(20_000, stable_rate)), 20_000)
        evalues = (
            two_arms(
                (int(candidate[n - 1]), int(n)),
                (int(stable[20 * n - 1]), int(20 * n)),
                margin,
                candidate_prior=RARE,
                stable_prior=before,
            )
            for n in range(50, 3001, 50)
        )
        rejected += _ever_rejects(evalues)
    assert rejected / sequences <= ALPHA


def test_a_fixed_horizon_test_looked_at_every_tick_would_not_hold_alpha():
    """Why e-values: the plain one-sided z-test, checked 80 times, errs far more than alpha."""
    rng = np.random.default_rng(0)
    plain = sequential = 0
    looks = np.arange(25, 2001, 25)
    for _ in range(400):
        events = np.cumsum(rng.random(looks[-1]) < 0.05)[looks - 1]
        z = (events / looks - 0.05) / np.sqrt(0.05 * 0.95 / looks)
        plain += bool((z > 1.645).any())
        sequential += _ever_rejects(one_arm(int(k), int(n), 0.05) for k, n in zip(events, looks))
    assert plain / 400 > 0.2 and sequential / 400 <= ALPHA


def test_the_null_is_fitted_exactly_on_its_boundary():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n_c, n_s = int(rng.integers(1, 3000)), int(rng.integers(1, 30_000))
        k_c, k_s = int(rng.integers(0, n_c + 1)), int(rng.integers(0, n_s + 1))
        margin = float(rng.uniform(-0.3, 0.3))
        low, high = max(0.0, -margin), min(1.0, 1.0 - margin)
        grid = np.linspace(low, high, 4001)[1:-1]
        best = max(log_likelihood(k_c, n_c, p + margin) + log_likelihood(k_s, n_s, p) for p in grid)
        assert _boundary_maximum(k_c, n_c, k_s, n_s, margin) >= best - 1e-9


def test_a_total_failure_is_shown_within_a_handful_of_samples():
    alpha = 0.01 / 4 / 2 * (2 / 3)  # one guardrail's first-stage share of the default budget

    def needed(bound: float) -> int:
        return next(n for n in range(1, 50) if one_arm(n, n, bound) >= threshold(alpha))

    assert needed(0.01) == 2  # invalid outputs: two NaN answers
    assert needed(0.5) == 13  # half failing, whatever stable does (after promotion too)
    stable = (5, 1000)  # against stable, 5 points of errors allowed: five failures
    assert next(n for n in range(1, 50) if two_arms((n, n), stable, 0.05) >= threshold(alpha)) == 5


def test_evidence_for_the_null_never_rejects_it():
    assert one_arm(0, 1000, 0.05) <= 0 and one_arm(50, 1000, 0.05) <= 0
    assert two_arms((10, 1000), (10, 1000), 0.01) <= 0
    assert two_arms((0, 0), (10, 100), 0.01) == 0.0
    assert two_arms((5, 1000), (5, 1000), 0.01, worse=False) < threshold(ALPHA)  # too little
    assert two_arms((100, 20_000), (100, 20_000), 0.01, worse=False) > threshold(ALPHA)


@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_the_quantile_bound_stays_above_the_quantile_at_every_look(quantile):
    """The k-th smallest draw is below the true quantile exactly when k draws are, so counting
    the draws below it is the whole story, for any continuous distribution (a Pareto here)."""
    rng = np.random.default_rng(5)
    truth = (1 - quantile) ** (-1 / 1.5) - 1  # Pareto shape 1.5 (infinite variance)
    looks = np.arange(5, 5001, 5)
    ranks = np.array([quantile_upper_rank(int(n), quantile, ALPHA) or n + 1 for n in looks])
    sequences = 2000
    below = np.cumsum(rng.pareto(1.5, (sequences, looks[-1])) < truth, axis=1)[:, looks - 1]
    ever = (below >= ranks).any(axis=1).mean()
    assert ever <= ALPHA
    sample_quantile_below = (below[:, 40] >= np.ceil(quantile * looks[40])).mean()
    assert sample_quantile_below > 0.3  # what a point estimate in its place would do


def test_the_quantile_bound_needs_a_few_draws_and_tightens_with_more():
    alpha = 0.01 / 4 / 2 * (2 / 3) / 2  # the latency guardrail's first-stage bound share
    assert quantile_upper_rank(0, 0.5, alpha) is None
    assert quantile_upper_rank(13, 0.5, alpha) is None  # too few for any bound
    assert quantile_upper_rank(14, 0.5, alpha) == 14
    shares = [quantile_upper_rank(n, 0.5, alpha) / n for n in (100, 1000, 10_000)]
    assert shares == sorted(shares, reverse=True) and 0.5 < shares[-1] < 0.53
