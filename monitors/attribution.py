"""Attribution drift: whether the reasons a model gives have moved.

A profile is each feature's mean absolute attribution (SHAP) over a sample of rows: how much the
model leans on each feature. Two profiles are compared by their shares (each feature's part of the
total), so a model whose answers simply grew larger does not count as reasoning differently: the
distance is the total variation between the shares, from 0 (the same reasons in the same
proportions) to 1 (no feature in common). Two samples of one model's rows are never at distance
0, and how far apart noise puts them depends on the rows and the model, so ``profile_distance``
also gives the p-value of a permutation test of the samples' rows: whether a distance is more than
noise, at whatever level its reader holds it to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

PERMUTATIONS = 99_999
"""Most splits of the pooled rows a noise test draws: p-values down to 1 in 100,000. A rollout's
attribution comparison holds each verdict it reads to a smaller level than the last
(traffic/rollout_checks.py), 1 in 2,000 by its third."""
AS_FAR_TO_STOP = 10
"""A noise test stops once this many splits were as far apart as the two samples (Besag and
Clifford's sequential p-value, as valid as drawing every split): two samples of one population
stop within a few hundred splits, and only distances beyond noise cost the whole draw."""


def shares(profile: Mapping[str, float]) -> dict[str, float]:
    """Each feature's share of the total attribution (all equal when the model leans on none)."""
    total = sum(profile.values())
    if total <= 0:
        return {name: 1 / len(profile) for name in profile} if profile else {}
    return {name: value / total for name, value in profile.items()}


def attribution_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Total variation between two profiles' shares, over the features of both."""
    first, second = shares(a), shares(b)
    names = set(first) | set(second)
    return 0.5 * sum(abs(first.get(n, 0.0) - second.get(n, 0.0)) for n in names)


@dataclass(frozen=True)
class ProfileDistance:
    """How far two samples' profiles are apart, and the p-value of a permutation test that
    both come from one population."""

    distance: float
    p_value: float


def profile_distance(first: np.ndarray, second: np.ndarray) -> ProfileDistance:
    """The distance between the profiles of two samples (rows of absolute attributions, a column
    per feature), and a permutation test's (seeded) p-value that both come from one population:
    how far noise alone takes the distance depends on the rows, the model and the features
    (0.04-0.11 between two 32-row samples of one model's rows on the demo's data)."""
    pooled = np.vstack([first, second])
    observed = _distances(first.mean(axis=0)[None], second.mean(axis=0)[None])[0]
    rng = np.random.default_rng(0)
    as_far = drawn = 0
    while drawn < PERMUTATIONS:  # in chunks: a split matrix is permutations x rows
        count = min(250, PERMUTATIONS - drawn)
        in_first = np.argsort(rng.random((count, len(pooled))), axis=1) < len(first)
        sums = in_first @ pooled
        firsts = sums / len(first)
        seconds = (pooled.sum(axis=0) - sums) / len(second)
        reached = as_far + np.cumsum(_distances(firsts, seconds) >= observed * (1 - 1e-9))
        if reached[-1] >= AS_FAR_TO_STOP:
            splits = drawn + int(np.argmax(reached >= AS_FAR_TO_STOP)) + 1
            return ProfileDistance(float(observed), AS_FAR_TO_STOP / splits)
        as_far, drawn = int(reached[-1]), drawn + count
    return ProfileDistance(float(observed), (as_far + 1) / (PERMUTATIONS + 1))


def _distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``attribution_distance`` of each row pair of two (profiles x features) arrays."""
    return 0.5 * np.abs(_shares(first) - _shares(second)).sum(axis=1)


def _shares(profiles: np.ndarray) -> np.ndarray:
    totals = profiles.sum(axis=1, keepdims=True)
    equal = np.full_like(profiles, 1 / profiles.shape[1])
    return np.where(totals > 0, profiles / np.where(totals > 0, totals, 1), equal)
