"""Attribution drift: whether the reasons a model gives have moved.

A profile is each feature's mean absolute attribution (SHAP) over a sample of rows: how much the
model leans on each feature. Two profiles are compared by their shares (each feature's part of the
total), so a model whose answers simply grew larger does not count as reasoning differently: the
distance is the total variation between the shares, from 0 (the same reasons in the same
proportions) to 1 (no feature in common).
"""

from __future__ import annotations

from collections.abc import Mapping


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
