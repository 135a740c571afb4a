"""Always-valid confidence sequences for proportions, so a rollout may look at its evidence every
tick without inflating false rollbacks.

A fixed-horizon test checked repeatedly rolls back a healthy A/A canary far more often than its
alpha (see ../shared/reference/rollout.md: 14% to 34% at alpha 0.05 over 5 to 60 looks). The
mixture sequential probability ratio test (mSPRT; Johari et al. 2017, Lindon et al. 2022) with a
normal mixture of scale ``tau`` over the effect gives, at every sample size at once, the interval

    d +- sqrt( 2 V (V + tau^2) / tau^2 * log( sqrt((V + tau^2) / V) / alpha ) )

around the observed difference ``d`` of two proportions with variance ``V``: the probability that
it ever excludes the true difference is at most ``alpha``, however often it is looked at (normal
approximation, plug-in variance). Counts are smoothed (x + 1) / (n + 2) so that zero errors do not
give a zero variance. ``tau`` should be of the order of the effects that matter: the margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """An always-valid interval for a difference (or a single proportion)."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def _variance(successes: int, trials: int) -> float:
    p = (successes + 1) / (trials + 2)
    return p * (1 - p) / trials


def _radius(variance: float, tau: float, alpha: float) -> float:
    tau2 = tau * tau
    ratio = math.sqrt((variance + tau2) / variance)
    return math.sqrt(2 * variance * (variance + tau2) / tau2 * math.log(ratio / alpha))


def difference(
    events_a: int, trials_a: int, events_b: int, trials_b: int, tau: float, alpha: float
) -> Interval:
    """Always-valid interval for rate(a) - rate(b); both arms need at least one trial."""
    estimate = events_a / trials_a - events_b / trials_b
    radius = _radius(_variance(events_a, trials_a) + _variance(events_b, trials_b), tau, alpha)
    return Interval(estimate, estimate - radius, estimate + radius)


def proportion(events: int, trials: int, tau: float, alpha: float) -> Interval:
    """Always-valid interval for one rate; needs at least one trial."""
    estimate = events / trials
    radius = _radius(_variance(events, trials), tau, alpha)
    return Interval(estimate, estimate - radius, estimate + radius)
