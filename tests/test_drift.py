"""Drift with Evidently: shifted features are flagged and only they, identical data is not,
whatever the feature's shape; small windows give no verdict, the prediction's drift is measured,
the report renders with the same verdicts."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import pytest

from monitors import drift
from monitors.drift import (
    MIN_REFERENCE_ROWS,
    DriftSettings,
    column_drift,
    compute_drift,
    drift_report,
    drift_summary,
)
from monitors.reports import ReportArchive

FEATURES = [f"f{i}" for i in range(30)]
PLAIN_DISTANCES = DriftSettings(numeric_method="wasserstein", categorical_method="jensenshannon")
"""Distances against the fixed threshold, without the noise test: what the test is for."""


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


def test_a_small_reference_gives_verdicts_down_to_its_own_floor(reference):
    """A model registered with a small labeled sample (iris: 150 rows) is still watched: the
    window needs ``min_rows``, the reference ``MIN_REFERENCE_ROWS`` (or ``min_rows``, if lower)."""
    current = window(250, seed=11, shifted=(2,))
    small = reference.sample(150, random_state=0)
    assert compute_drift(current, small, FEATURES, "prediction").drifted_features == ["f2"]
    too_small = reference.sample(MIN_REFERENCE_ROWS - 1, random_state=0)
    result = compute_drift(current, too_small, FEATURES, "prediction")
    assert result.status == "insufficient_data" and result.reference_rows == MIN_REFERENCE_ROWS - 1
    few = DriftSettings(min_rows=50)
    assert compute_drift(current, reference.sample(60), FEATURES, settings=few).status == "ok"


def test_prediction_drift_when_the_predicted_classes_shift(reference):
    result = compute_drift(
        window(3000, seed=5, prediction_share=0.9), reference, FEATURES, "prediction"
    )
    assert result.prediction.drifted and result.prediction.method == "jensenshannon_beyond_noise"


def test_numeric_prediction_drift_for_regressors(reference):
    current = window(3000, seed=6).assign(prediction=lambda f: f["f0"] + 1.0)
    base = reference.assign(prediction=lambda f: f["f0"])
    result = compute_drift(current, base, FEATURES, "prediction", categorical_prediction=False)
    assert result.prediction.drifted and result.prediction.method == "wasserstein_beyond_noise"


def test_report_renders_html_and_json_with_the_same_scores(reference, tmp_path):
    current = window(1000, seed=7, shifted=(2,))
    snapshot = drift_report(current, reference, FEATURES[:5], "prediction")
    snapshot.save_html(str(tmp_path / "drift.html"))
    values = [m["value"] for m in snapshot.dict()["metrics"]]
    fast = compute_drift(current, reference, FEATURES[:5], "prediction")
    assert values == pytest.approx([c.score for c in fast.features] + [fast.prediction.score])
    assert (tmp_path / "drift.html").stat().st_size > 100_000


def test_a_drift_report_opens_with_the_drifted_features_ranked_by_score(reference, tmp_path):
    current = window(2000, seed=11, shifted=(2, 4))
    current["f4"] += 0.5  # f4 moves twice as far as f2
    result = compute_drift(current, reference, FEATURES[:6], "prediction")
    summary = drift_summary(result)
    assert summary.headline == (
        "2 of 6 features drifted: f2, f4; prediction drift: no "
        "(2000 rows against 5000 reference rows)"
    )
    assert [row[0] for row in summary.rows[:2]] == ["f4", "f2"]
    assert [row[4] for row in summary.rows] == [True, True, False, False, False, False, False]
    assert "prediction (model output)" in [row[0] for row in summary.rows]
    snapshot = drift_report(current, reference, FEATURES[:6], "prediction")
    saved = ReportArchive(tmp_path).save("e", "v", "drift", snapshot, summary)
    html_file = next(f for f in saved if f.format == "html")
    body = html_file.path.read_text().split("<body", 1)[1]
    assert body.index("2 of 6 features drifted: f2, f4") < body.index("<div")  # Evidently's


def test_small_windows_from_the_same_distribution_are_not_flagged_as_noise():
    """250 rows against a 455-row reference (the demo's sizes): a fixed 0.1 flags sampling noise."""
    reference = window(455, seed=8)
    flagged = {"noise floor": 0, "fixed 0.1": 0}
    for seed in range(20):
        current = window(250, seed=100 + seed)
        for name, settings in (
            ("noise floor", DriftSettings()),
            ("fixed 0.1", PLAIN_DISTANCES),
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


def test_big_windows_keep_the_configured_threshold(reference):
    result = compute_drift(window(20_000, seed=10), reference, FEATURES, "prediction")
    assert {c.threshold for c in result.features} == {0.1}


SHAPES = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "log-normal": lambda rng, n: rng.lognormal(0, 1, n),
    "pareto 1.5 (amounts)": lambda rng, n: rng.pareto(1.5, n) + 1,
    "pareto 1.1": lambda rng, n: rng.pareto(1.1, n) + 1,
    "cauchy": lambda rng, n: rng.standard_cauchy(n),
    "zero-inflated log-normal": lambda rng, n: np.where(
        rng.random(n) < 0.6, 0.0, rng.lognormal(3, 1.5, n)
    ),
    "poisson 2 (counts)": lambda rng, n: rng.poisson(2, n).astype(float),
    "three integer levels": lambda rng, n: rng.integers(0, 3, n).astype(float),
    "bimodal": lambda rng, n: np.where(
        rng.random(n) < 0.3, rng.normal(-3, 0.5, n), rng.normal(2, 1, n)
    ),
    "binary, 10% ones": lambda rng, n: (rng.random(n) < 0.1).astype(float),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_an_undrifted_column_is_rarely_flagged_and_a_half_sd_shift_always_is(shape):
    """Windows drawn from the reference's own distribution (a reference of 100 to 5,000 rows, a
    window of 200 to 5,000): at most 0.5% flagged, whatever the shape, where a fixed threshold
    flags heavy tails often. A shift by half the reference's standard deviation at 2,000 rows is
    flagged (by three quarters against the smallest reference, MIN_REFERENCE_ROWS)."""
    draw = SHAPES[shape]
    rng = np.random.default_rng(zlib.crc32(shape.encode()))
    flagged = checked = 0
    for reference_rows in (200, 1000, 5000, MIN_REFERENCE_ROWS):
        reference = pd.Series(draw(rng, reference_rows), name="x")
        for window_rows in (200, 1000, 5000):
            for _ in range(25):
                window = pd.Series(draw(rng, window_rows), name="x")
                flagged += column_drift(reference, window, False, DriftSettings()).drifted
                checked += 1
        shift = 0.75 if reference_rows == MIN_REFERENCE_ROWS else 0.5
        shifted = pd.Series(draw(rng, 2000) + shift * reference.std(ddof=0), name="x")
        verdict = column_drift(reference, shifted, False, DriftSettings())
        assert verdict.drifted, (reference_rows, verdict)
    assert flagged / checked <= 0.005, f"{shape}: {flagged} of {checked} undrifted windows flagged"


def test_a_wider_spread_around_the_same_median_is_flagged_by_the_shape_test():
    """Mann-Whitney sees shifts; a column whose spread doubled around the same median is caught
    by Kolmogorov-Smirnov, which runs when Mann-Whitney alone does not decide."""
    rng = np.random.default_rng(21)
    reference = pd.Series(rng.standard_normal(2000), name="x")
    wider = pd.Series(2 * rng.standard_normal(2000), name="x")
    assert column_drift(reference, wider, False, DriftSettings()).drifted


def test_a_shift_is_decided_without_the_costly_exact_shape_test(monkeypatch):
    """K-S's exact p-value costs reference x window rows (most of a run's CPU on a 10,000-row
    window that a benchmark fills with one repeated row); a shift Mann-Whitney shows needs none."""
    calls = []
    monkeypatch.setattr(drift, "ks_2samp", lambda *args: calls.append(args))
    rng = np.random.default_rng(22)
    reference = pd.Series(rng.standard_normal(455), name="x")
    one_row = pd.Series(np.full(10_000, 1.5), name="x")
    assert column_drift(reference, one_row, False, DriftSettings()).drifted
    assert calls == []


def with_missing(values: np.ndarray, share: float, rng) -> pd.Series:
    """The values with about ``share`` of them missing (NaN), as a model that takes missing
    values receives them (``limits.allow_non_finite``)."""
    return pd.Series(np.where(rng.random(len(values)) < share, np.nan, values), name="x")


def test_a_column_with_missing_values_is_still_judged_and_going_missing_is_drift():
    """One missing value made the test's score NaN: such a column was never flagged, whether its
    values shifted or it went missing altogether."""
    rng = np.random.default_rng(31)
    reference = with_missing(rng.standard_normal(2000), 0.05, rng)
    shifted = with_missing(rng.standard_normal(2000) + 0.5, 0.05, rng)
    verdict = column_drift(reference, shifted, False, DriftSettings())
    assert verdict.drifted and verdict.score > 0.3
    more_missing = with_missing(rng.standard_normal(2000), 0.35, rng)
    verdict = column_drift(reference, more_missing, False, DriftSettings())
    assert verdict.drifted and verdict.score == pytest.approx(0.3, abs=0.04)
    gone = pd.Series(np.full(2000, np.nan), name="x")
    verdict = column_drift(reference, gone, False, DriftSettings())
    assert verdict.drifted and verdict.score == pytest.approx(0.95, abs=0.02)


def test_infinities_are_missing_values_not_a_blind_spot():
    """A model that allows non-finite inputs gets infinities too: one made the column's distance
    NaN, reported as 0 and never flagged, whatever happened to the column."""
    rng = np.random.default_rng(33)
    reference = with_missing(rng.standard_normal(2000), 0.05, rng).fillna(np.inf)
    same = with_missing(rng.standard_normal(2000), 0.05, rng).fillna(-np.inf)
    assert not column_drift(reference, same, False, DriftSettings()).drifted
    shifted = with_missing(rng.standard_normal(2000) + 0.5, 0.05, rng).fillna(np.inf)
    verdict = column_drift(reference, shifted, False, DriftSettings())
    assert verdict.drifted and verdict.score > 0.3
    more_infinite = with_missing(rng.standard_normal(2000), 0.35, rng).fillna(np.inf)
    verdict = column_drift(reference, more_infinite, False, DriftSettings())
    assert verdict.drifted and verdict.score == pytest.approx(0.3, abs=0.04)


@pytest.mark.parametrize("share", [0.02, 0.3, 0.9])
def test_an_undrifted_column_with_missing_values_is_rarely_flagged(share):
    """The same share missing and the same distribution: flagged no more often than a column
    with every value there (at most 0.5% of windows)."""
    rng = np.random.default_rng(int(share * 100))
    flagged = checked = 0
    for reference_rows in (200, 1000, 5000):
        reference = with_missing(rng.lognormal(0, 1, reference_rows), share, rng)
        for window_rows in (200, 1000, 5000):
            for _ in range(25):
                window = with_missing(rng.lognormal(0, 1, window_rows), share, rng)
                flagged += column_drift(reference, window, False, DriftSettings()).drifted
                checked += 1
    assert flagged / checked <= 0.005, f"{flagged} of {checked} undrifted windows flagged"


@pytest.mark.parametrize("nothing", [np.nan, np.inf])
def test_a_report_renders_when_a_column_has_no_values_in_the_window(reference, tmp_path, nothing):
    """Evidently cannot judge a column with no values (all missing, or all infinite, which it
    reads as missing) and failed the whole report; the report leaves it out, and its summary
    still names it drifted."""
    current = window(1000, seed=32)
    current["f3"] = nothing
    result = compute_drift(current, reference, FEATURES, "prediction")
    assert result.drifted_features == ["f3"]
    snapshot = drift_report(current, reference, FEATURES, "prediction")
    snapshot.save_json(str(tmp_path / "drift.json"))
    judged = re.findall(r"column=(\w+)", (tmp_path / "drift.json").read_text())
    assert sorted(judged) == sorted([*(f for f in FEATURES if f != "f3"), "prediction"])
