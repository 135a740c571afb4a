"""Always-valid tests for rates, so a rollout may look at its evidence every tick, for as long as it
runs or sits paused, without inflating false rollbacks.

A fixed-horizon test checked repeatedly rolls back a healthy A/A canary far more often than its
alpha (../shared/reference/rollout.md: 14% to 34% at alpha 0.05 over 5 to 60 looks). Every check
here is an e-value: a number that, while the null hypothesis holds, stays a nonnegative
(super)martingale in the amount of data, so by Ville's inequality the chance that it EVER reaches
1/alpha is at most alpha, however often it is looked at (Ramdas et al., "Game-theoretic statistics
and safe anytime-valid inference", 2023).

The e-values are likelihood ratios with the alternative integrated over a Beta prior (Robbins'
mixture; with the Jeffreys prior, Beta(1/2, 1/2), it is the Krichevsky-Trofimov predictive
likelihood) and the null maximised over its composite set ("universal inference", Wasserman,
Ramdas and Balakrishnan 2020). They are exact for Bernoulli data of any size: no normal
approximation, nothing that breaks when a rate is 0 or a count is 3.

- ``one_arm``: H0 "the rate is at most p0" (or at least p0). Used by absolute guardrails (a total
  failure reaches 1/alpha within a handful of requests) and by shadow agreement.
- ``two_arms``: H0 "candidate's rate minus stable's is at most a margin" (or at least it, to show
  non-inferiority). The stable arm's nuisance rate is maximised out; its prior may be informed by
  stable's own earlier data (fixed before the data it weighs, so validity holds whatever it says),
  which removes most of the price of not knowing stable's rate.

Each function returns the log of the e-value; ``log(1 / alpha)`` is the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BetaPrior:
    """The mixing distribution over an arm's rate, Beta(a, b)."""

    a: float = 0.5
    b: float = 0.5

    @classmethod
    def informed(cls, events: int, trials: int, weight_cap: float = 10_000.0) -> BetaPrior:
        """Jeffreys updated with earlier data of the same arm (at most ``weight_cap`` trials'
        worth, so a rate that moved since is not held against the new data for long)."""
        scale = min(1.0, weight_cap / trials) if trials else 0.0
        return cls(0.5 + events * scale, 0.5 + (trials - events) * scale)


JEFFREYS = BetaPrior()
RARE = BetaPrior(0.5, 3.0)
"""For rates of bad events (errors, slow or wrong answers): most of its mass below 0.3, where
those rates live, so evidence about them costs less than under Jeffreys' U shape."""


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_marginal(events: int, trials: int, prior: BetaPrior = JEFFREYS) -> float:
    """Log of the mixture likelihood of the arm's data (its sequence, not just its count)."""
    return _log_beta(prior.a + events, prior.b + trials - events) - _log_beta(prior.a, prior.b)


def log_likelihood(events: int, trials: int, rate: float) -> float:
    """Log-likelihood of ``events`` in ``trials`` at ``rate`` (0 log 0 = 0)."""
    if events and rate <= 0.0 or trials - events and rate >= 1.0:
        return -math.inf
    value = events * math.log(rate) if events else 0.0
    return value + ((trials - events) * math.log1p(-rate) if trials - events else 0.0)


def one_arm(
    events: int, trials: int, bound: float, above: bool = True, prior: BetaPrior = JEFFREYS
) -> float:
    """Log e-value against H0 "rate <= bound" (``above``) or "rate >= bound"; 0 or less while
    the observed rate is on the null's side."""
    if trials == 0:
        return 0.0
    observed = events / trials
    if (observed <= bound) if above else (observed >= bound):
        return min(
            0.0, log_marginal(events, trials, prior) - log_likelihood(events, trials, observed)
        )
    return log_marginal(events, trials, prior) - log_likelihood(events, trials, bound)


def two_arms(
    candidate: tuple[int, int],
    stable: tuple[int, int],
    margin: float,
    worse: bool = True,
    candidate_prior: BetaPrior = JEFFREYS,
    stable_prior: BetaPrior = JEFFREYS,
) -> float:
    """Log e-value against H0 "p_candidate - p_stable <= margin" (``worse``: evidence that the
    candidate is worse than stable by more than the margin) or "... >= margin" (evidence that it
    is not). Arms are (events, trials)."""
    (k_c, n_c), (k_s, n_s) = candidate, stable
    if n_c == 0 or n_s == 0:
        return 0.0
    mixture = log_marginal(k_c, n_c, candidate_prior) + log_marginal(k_s, n_s, stable_prior)
    difference = k_c / n_c - k_s / n_s
    if (difference <= margin) if worse else (difference >= margin):
        best = log_likelihood(k_c, n_c, k_c / n_c) + log_likelihood(k_s, n_s, k_s / n_s)
        return min(0.0, mixture - best)
    return mixture - _boundary_maximum(k_c, n_c, k_s, n_s, margin)


def _boundary_maximum(k_c: int, n_c: int, k_s: int, n_s: int, margin: float) -> float:
    """max over p of loglik_c(p + margin) + loglik_s(p): the null's best fit on its boundary.
    The log-likelihood is concave in p: Newton's method, kept inside a shrinking bracket."""
    low, high = max(0.0, -margin), min(1.0, 1.0 - margin)
    tiny = 1e-12
    f_c, f_s = n_c - k_c, n_s - k_s

    def derivatives(p: float) -> tuple[float, float]:
        c, s = min(max(p + margin, tiny), 1 - tiny), min(max(p, tiny), 1 - tiny)
        first = k_c / c - f_c / (1 - c) + k_s / s - f_s / (1 - s)
        second = -k_c / c**2 - f_c / (1 - c) ** 2 - k_s / s**2 - f_s / (1 - s) ** 2
        return first, second

    p = min(max((k_c + k_s) / (n_c + n_s) - margin * n_c / (n_c + n_s), low), high)
    for _ in range(200):
        first, second = derivatives(p)
        if abs(first) < 1e-9:
            break
        if first > 0:
            low = p
        else:
            high = p
        step = p - first / second if second < 0 else (low + high) / 2
        if not low < step < high:
            step = (low + high) / 2
        if abs(step - p) < 1e-15 or high - low < 1e-15:
            p = step
            break
        p = step
    return log_likelihood(k_c, n_c, p + margin) + log_likelihood(k_s, n_s, p)


def quantile_upper_rank(draws: int, quantile: float, alpha: float) -> int | None:
    """The rank k (1-based, smallest first) of an anytime-valid upper confidence bound for a
    distribution's ``quantile`` from ``draws`` independent draws of it: however many draws are
    looked at, and however often, the k-th smallest stays at or above the quantile except with
    probability at most ``alpha``. None while there are too few draws for any bound.

    Why: each draw falls below the true quantile with probability at most ``quantile``, and the
    k-th smallest lies below it only when k draws do; ``one_arm`` on those events is an e-process,
    so by Ville's inequality it ever reaches ``1 / alpha`` with probability at most alpha. k is
    the smallest count at which it would (the construction of Howard and Ramdas, "Sequential
    estimation of quantiles with applications to A/B-testing and best-arm identification", 2022,
    with this module's mixture as the boundary)."""
    bar = threshold(alpha)
    if one_arm(draws, draws, quantile) < bar:
        return None
    low, high = math.ceil(draws * quantile), draws  # one_arm is increasing in events above it
    while low < high:
        middle = (low + high) // 2
        if one_arm(middle, draws, quantile) >= bar:
            high = middle
        else:
            low = middle + 1
    return low


def threshold(alpha: float) -> float:
    """The log e-value at which a test of level ``alpha`` rejects."""
    return math.log(1.0 / alpha)
