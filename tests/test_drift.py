"""Drift with Evidently: shifted features are flagged and only they, identical data is not,
small windows give no verdict, the prediction's drift is measured, the report renders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitors.drift import DriftSettings, compute_drift, drift_report

FEATURES = [f"f{i}" for i in range(30)]


def window(rows: int, seed: int, shifted=(), prediction_share: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, len(FEATURES)))
    for column in shifted:
        values[:, column] += 0.5
    frame = pd.DataFrame(values, columns=FEATURES)
    frame["prediction"] = np.where(rng.random(rows) < prediction_share, "benign", "malignant")
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return window(5000, seed=1)


def test_two_shifted_features_are_flagged_and_no_others(reference):
    result = compute_drift(window(3000, seed=2, shifted=(4, 17)), reference, FEATURES, "prediction")
    assert result.status == "ok"
    assert result.drifted_features == ["f4", "f17"]
    assert result.drifted_share == pytest.approx(2 / 30)
    scores = {c.column: c.score for c in result.features}
    assert scores["f4"] > 0.3 and max(s for c, s in scores.items() if c not in ("f4", "f17")) < 0.1


def test_identical_distributions_are_not_flagged(reference):
    result = compute_drift(window(3000, seed=3), reference, FEATURES, "prediction")
    assert result.drifted_features == [] and not result.prediction.drifted


def test_small_windows_are_insufficient_not_a_verdict(reference):
    result = compute_drift(window(50, seed=4, shifted=(0,)), reference, FEATURES, "prediction")
    assert result.status == "insufficient_data" and result.features == () and result.rows == 50
    strict = DriftSettings(min_rows=10)
    assert compute_drift(window(50, seed=4), reference, FEATURES, settings=strict).status == "ok"


def test_prediction_drift_when_the_predicted_classes_shift(reference):
    result = compute_drift(
        window(3000, seed=5, prediction_share=0.9), reference, FEATURES, "prediction"
    )
    assert result.prediction.drifted and result.prediction.method == "jensenshannon"


def test_numeric_prediction_drift_for_regressors(reference):
    current = window(3000, seed=6).assign(prediction=lambda f: f["f0"] + 1.0)
    base = reference.assign(prediction=lambda f: f["f0"])
    result = compute_drift(current, base, FEATURES, "prediction", categorical_prediction=False)
    assert result.prediction.drifted and result.prediction.method == "wasserstein"


def test_report_renders_html_and_json_with_the_same_scores(reference, tmp_path):
    current = window(1000, seed=7, shifted=(2,))
    snapshot = drift_report(current, reference, FEATURES[:5], "prediction")
    snapshot.save_html(str(tmp_path / "drift.html"))
    values = [m["value"] for m in snapshot.dict()["metrics"]]
    fast = compute_drift(current, reference, FEATURES[:5], "prediction")
    assert values == pytest.approx([c.score for c in fast.features] + [fast.prediction.score])
    assert (tmp_path / "drift.html").stat().st_size > 100_000


def test_small_windows_from_the_same_distribution_are_not_flagged_as_noise():
    """250 rows against a 455-row reference (the demo's sizes): a fixed 0.1 flags sampling noise."""
    reference = window(455, seed=8)
    flagged = {"noise floor": 0, "fixed 0.1": 0}
    for seed in range(20):
        current = window(250, seed=100 + seed)
        for name, settings in (
            ("noise floor", DriftSettings()),
            ("fixed 0.1", DriftSettings(noise_floor=False)),
        ):
            result = compute_drift(current, reference, FEATURES, "prediction", settings=settings)
            flagged[name] += len(result.drifted_features) + result.prediction.drifted
    assert flagged["fixed 0.1"] > 100  # of 620 columns: what the floor is for
    assert flagged["noise floor"] <= 3


def test_a_real_shift_is_still_flagged_on_a_small_window():
    reference = window(455, seed=8)
    current = window(250, seed=9, shifted=(3,))
    current["f3"] += 0.5  # one standard deviation in all
    result = compute_drift(current, reference, FEATURES, "prediction")
    assert result.drifted_features == ["f3"]
    assert result.features[3].threshold > 0.1  # raised for this size


def test_big_windows_keep_the_configured_threshold(reference):
    result = compute_drift(window(20_000, seed=10), reference, FEATURES, "prediction")
    assert {c.threshold for c in result.features} == {0.1}
