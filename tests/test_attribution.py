"""Attribution drift's distance: shares of mean |SHAP|, compared by total variation."""

from __future__ import annotations

import pytest

from monitors.attribution import attribution_distance, shares
from monitors.drift import DriftResult, drift_summary


def test_the_same_reasons_at_another_scale_have_not_moved():
    assert attribution_distance({"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 6.0}) == pytest.approx(0)


def test_reasons_moved_from_one_feature_to_another_count_fully():
    assert attribution_distance({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 5.0}) == pytest.approx(1)
    assert attribution_distance({"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == pytest.approx(0.25)


def test_a_model_that_leans_on_nothing_has_equal_shares():
    assert shares({"a": 0.0, "b": 0.0}) == {"a": 0.5, "b": 0.5}
    assert shares({}) == {}


def test_the_drift_summary_shows_how_far_the_reasons_moved():
    result = DriftResult("ok", 500, 400)
    summary = drift_summary(result, ({"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}))
    assert summary.headline.endswith("reasons moved 0.50 (0-1)")
    assert summary.columns[-2:] == ("mean |SHAP| here", "mean |SHAP| reference")
