"""Whether a business reward fits an endpoint's experiment: a metric it declares, and a finite
number of at most ``MAX_MAGNITUDE`` (0 or 1 for a binary metric), either one for the request or
one per row.

The gateway checks every reward before the monitor stores any; the monitor checks again, and
against the rows the request really had once its record is there. A request's value is its rows'
mean, so a reward per row and one per request weigh the same in the readout.
"""

from __future__ import annotations

import math

from service.codecs import MAX_MAGNITUDE, is_bounded_number, is_finite_number
from service.config import ExperimentConfig


def reward_problem(
    experiment: ExperimentConfig | None, metric: object, value: object, rows: int | None = None
) -> str | None:
    """Why ``value`` cannot be a ``metric`` reward of this experiment (or of a request of
    ``rows`` rows), or None when it can."""
    if experiment is None:
        return "the endpoint has no experiment in gateway.yaml"
    if not isinstance(metric, str) or metric not in experiment.rewards:
        return f"metric {metric!r} is not a reward of the experiment ({sorted(experiment.rewards)})"
    values = value if isinstance(value, list) else [value]
    if not values or not all(is_finite_number(v) for v in values):
        return "a reward is a finite number, or a non-empty list of them (one per row)"
    if not all(is_bounded_number(v) for v in values):
        return f"a reward is at most {MAX_MAGNITUDE:g} either way"
    if experiment.rewards[metric].kind == "binary" and any(v not in (0, 1) for v in values):
        return f"{metric} is binary: its values are 0 or 1"
    if rows is not None and isinstance(value, list) and len(values) != rows:
        return f"the request had {rows} row(s) but the reward has {len(values)} value(s)"
    return None


def request_value(value: int | float | list) -> float:
    """One value for the request: the reward itself, or its rows' mean."""
    values = value if isinstance(value, list) else [value]
    return math.fsum(values) / len(values)
