"""Rewards fit an experiment or are refused with a reason: declared metrics only, finite numbers,
0 or 1 for a binary metric, one value per row when a list."""

from __future__ import annotations

import math

import pytest

from service.config import ExperimentConfig
from service.rewards import request_value, reward_problem

EXPERIMENT = ExperimentConfig(
    arms=["a", "b"],
    rewards={"converted": {"kind": "binary"}, "revenue": {"kind": "continuous"}},
    primary="converted",
)


@pytest.mark.parametrize(
    "metric, value, rows",
    [
        ("converted", 1, None),
        ("converted", 0.0, 3),
        ("revenue", -2.5, None),
        ("revenue", [1, 2], 2),
        ("revenue", -1e15, None),
    ],
)
def test_good_rewards_fit(metric, value, rows):
    assert reward_problem(EXPERIMENT, metric, value, rows) is None


@pytest.mark.parametrize(
    "metric, value, rows, named",
    [
        ("clicks", 1, None, "not a reward"),
        (["converted"], 1, None, "not a reward"),
        ("converted", 0.5, None, "binary"),
        ("converted", True, None, "finite number"),
        ("revenue", math.nan, None, "finite number"),
        ("revenue", math.inf, None, "finite number"),
        # a JSON integer past any float: it was a 500
        pytest.param("revenue", 10**400, None, "finite number", id="huge-integer"),
        pytest.param("revenue", [1, -(10**400)], 2, "finite number", id="huge-integer-row"),
        ("revenue", "3", None, "finite number"),
        pytest.param("revenue", 1e160, None, "at most 1e+15", id="huge"),
        pytest.param("revenue", [1, -2e15], 2, "at most 1e+15", id="huge-row"),
        ("revenue", [], None, "finite number"),
        ("revenue", [1, [2]], None, "finite number"),
        ("revenue", [1, 2], 3, "3 row(s)"),
    ],
)
def test_bad_rewards_say_why(metric, value, rows, named):
    assert named in reward_problem(EXPERIMENT, metric, value, rows)


def test_an_endpoint_without_an_experiment_takes_no_reward():
    assert "no experiment" in reward_problem(None, "converted", 1)


def test_a_request_value_is_the_mean_of_its_rows():
    assert request_value(3) == 3.0
    assert request_value([1, 0, 0, 1]) == 0.5
