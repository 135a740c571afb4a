"""Input and prediction drift of a window against a reference sample, computed with Evidently.

Two paths, because they have different costs:
- ``compute_drift`` (every scheduled run, feeds the metrics): Evidently's own statistical tests
  (``evidently.legacy.calculations.stattests``), one per column, without building Evidently's
  plotly widgets, which are ~75% of a ``Report`` run's time (profiled: bench/drift.py).
- ``drift_report`` (what operators open): a full Evidently ``Report`` of explicit per-column
  ``ValueDrift`` metrics with the same methods and thresholds, saved as HTML and JSON.

A column drifted when two things hold. Its distance is at least the configured threshold (0.1):
the change is big enough to matter (normed Wasserstein distance for numeric columns, Jensen-Shannon
for categorical ones such as a predicted label; distances keep one meaning at any size, where
p-values alone flag every column of a big window, see ../shared/reference/monitoring.md). And a
distribution-free test says it is not sampling noise at ``NOISE_ALPHA`` (two-sample
Kolmogorov-Smirnov and Mann-Whitney for numeric columns, chi-square homogeneity for categorical
ones): two finite
samples of one distribution are never at distance zero, and how far noise alone takes the distance
depends on the column's shape (a heavy-tailed amount, a count with a few levels) as much as on the
sizes, so no fixed threshold or formula holds for every shape. The rank tests' false-alarm rate
is ``NOISE_ALPHA`` for any continuous distribution, and no higher where ties are many (counts,
binary flags): tests/test_drift.py checks ten shapes, heavy tails and zero inflation among them. Big windows are held to the threshold; small ones need a bigger shift.

Both are registered with Evidently as stat tests (``wasserstein_beyond_noise`` and
``jensenshannon_beyond_noise``), so the operators' report judges each column by the same rule as
the metrics. A window smaller than ``min_rows`` gives "insufficient_data", never a verdict; so does
a reference smaller than ``MIN_REFERENCE_ROWS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.jensenshannon import jensenshannon_stat_test
from evidently.legacy.calculations.stattests.registry import (
    StatTest,
    get_stattest,
    register_stattest,
)
from evidently.legacy.calculations.stattests.wasserstein_distance_norm import (
    wasserstein_stat_test,
)
from evidently.legacy.core import ColumnType
from scipy.stats import chi2_contingency, ks_2samp, mannwhitneyu

from monitors.attribution import attribution_distance
from monitors.reports import ReportSummary

Status = Literal["ok", "insufficient_data"]


NOISE_ALPHA = 0.001
"""A column whose distance is past the threshold is flagged only if the distribution-free test
rejects "the same distribution" at this level: an undrifted column is flagged in at most about
1 window in 1,000, whatever its shape."""


def _wasserstein_beyond_noise(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    score = wasserstein_stat_test(reference, current, feature_type, threshold).drift_score
    if score < threshold:
        return score, False
    return score, _rank_p_value(reference, current, NOISE_ALPHA) < NOISE_ALPHA


def _jensenshannon_beyond_noise(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    score = jensenshannon_stat_test(reference, current, feature_type, threshold).drift_score
    if score < threshold:
        return score, False
    return score, noise_p_value(reference, current, categorical=True) < NOISE_ALPHA


def predictions_apart(
    stable: pd.Series, candidate: pd.Series, categorical: bool, settings: DriftSettings
) -> tuple[ColumnDrift, float] | None:
    """How far a candidate's predictions are from stable's (the drift test of one column,
    stable's as the reference), and the p-value of the noise test that they come from one
    distribution (1 where the distance is under the threshold: no test needed); None with
    fewer rows than a verdict needs."""
    if len(candidate) < settings.min_rows or len(stable) < settings.min_reference_rows:
        return None
    if categorical:
        stable, candidate = stable.astype(str), candidate.astype(str)
    found = column_drift(stable, candidate, categorical, settings)
    tested = found.score >= found.threshold
    return found, noise_p_value(stable, candidate, categorical) if tested else 1.0


def noise_p_value(reference: pd.Series, current: pd.Series, categorical: bool) -> float:
    """The p-value of the distribution-free test that two samples come from one distribution:
    what tells a distance past the threshold from noise (chi-square homogeneity for categories,
    rank tests for numbers). A rollout that compares the candidate's predictions with stable's
    holds it to a level of its own, smaller at each verdict it reads."""
    if not categorical:
        finite = [_infinite_as_missing(values).dropna() for values in (reference, current)]
        return _rank_p_value(*finite, 0.0)
    reference, current = reference.astype(str), current.astype(str)
    counts = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0)
    return float(chi2_contingency(counts.to_numpy().T).pvalue)


def _rank_p_value(reference: pd.Series, current: pd.Series, enough: float) -> float:
    """K-S sees any change of shape, Mann-Whitney is the more powerful one for a shift: the
    smaller of their p-values, doubled (Bonferroni: either may reject). Mann-Whitney first: it
    costs n log n, K-S's exact p-value n x m (most of a run's CPU on a 10,000-row window), so
    K-S is left out where Mann-Whitney's alone is under ``enough`` (the answer is then an upper
    bound, which is as valid)."""
    shifted = min(1.0, 2 * float(mannwhitneyu(reference, current).pvalue))
    if shifted < enough:
        return shifted
    return min(shifted, 2 * float(ks_2samp(reference, current).pvalue))


WASSERSTEIN_BEYOND_NOISE = StatTest(
    name="wasserstein_beyond_noise",
    display_name=f"Wasserstein distance (normed), if rank tests say it is not noise (p < {NOISE_ALPHA})",
    allowed_feature_types=[ColumnType.Numerical],
    default_threshold=0.1,
)
JENSENSHANNON_BEYOND_NOISE = StatTest(
    name="jensenshannon_beyond_noise",
    display_name=f"Jensen-Shannon distance, if chi-square says it is not noise (p < {NOISE_ALPHA})",
    allowed_feature_types=[ColumnType.Categorical],
    default_threshold=0.1,
)
register_stattest(WASSERSTEIN_BEYOND_NOISE, _wasserstein_beyond_noise)
register_stattest(JENSENSHANNON_BEYOND_NOISE, _jensenshannon_beyond_noise)


MIN_REFERENCE_ROWS = 100
"""A reference gives verdicts from this many rows (or ``min_rows``, if lower), though a window
needs ``min_rows``: a model is often registered with a small labeled sample (150 rows for iris),
and the tests are distribution-free at any size, so an undrifted window is flagged no more often
than against a big reference (tests/test_drift.py: ten shapes at 100 rows). Below 100 rows, shifts
of three quarters of a standard deviation start to go unflagged."""


@dataclass(frozen=True)
class DriftSettings:
    """Which tests, what threshold, how many rows make a verdict."""

    numeric_method: str = WASSERSTEIN_BEYOND_NOISE.name
    categorical_method: str = JENSENSHANNON_BEYOND_NOISE.name
    threshold: float = 0.1
    min_rows: int = 200

    @property
    def min_reference_rows(self) -> int:
        """Rows a reference needs for a verdict (see ``MIN_REFERENCE_ROWS``)."""
        return min(self.min_rows, MIN_REFERENCE_ROWS)


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """One window's verdict. Scores are empty when ``status`` is ``insufficient_data``."""

    status: Status
    rows: int
    reference_rows: int
    features: tuple[ColumnDrift, ...] = ()
    prediction: ColumnDrift | None = None

    @property
    def drifted_share(self) -> float:
        if not self.features:
            return 0.0
        return sum(c.drifted for c in self.features) / len(self.features)

    @property
    def drifted_features(self) -> list[str]:
        return [c.column for c in self.features if c.drifted]


def column_drift(
    reference: pd.Series, current: pd.Series, categorical: bool, settings: DriftSettings
) -> ColumnDrift:
    """Evidently's drift test for one column's values, and the change in its share of missing
    values (NaN or infinity: a model that takes them, ``limits.allow_non_finite``). The score is
    the larger of the two, and either one drifting drifts the column: one missing value made the
    test's score NaN, never flagged, and a feature that went missing was never seen to. An
    infinity counts as missing, as in Evidently's report: it has no distance to anything."""
    column_type = ColumnType.Categorical if categorical else ColumnType.Numerical
    method = settings.categorical_method if categorical else settings.numeric_method
    if not categorical:
        reference, current = _infinite_as_missing(reference), _infinite_as_missing(current)
    missing_score, missing_drifted = _missing_values_drift(reference, current, settings.threshold)
    reference, current = reference.dropna(), current.dropna()  # as Evidently's report does
    score, threshold, drifted = missing_score, settings.threshold, missing_drifted
    if len(reference) and len(current):
        test = get_stattest(reference, current, column_type, method)
        result = test(reference, current, column_type, settings.threshold)
        score, threshold = max(score, float(result.drift_score)), result.actual_threshold
        drifted = drifted or bool(result.drifted)
    return ColumnDrift(str(current.name), method, score, threshold, drifted)


def _infinite_as_missing(values: pd.Series | pd.DataFrame) -> pd.Series | pd.DataFrame:
    """The values with every infinity made missing (NaN), as Evidently's report reads them."""
    return values.replace([np.inf, -np.inf], np.nan)


def _missing_values_drift(
    reference: pd.Series, current: pd.Series, threshold: float
) -> tuple[float, bool]:
    """How far the share of missing values moved (0-1), and whether that is past ``threshold``
    and not noise (chi-square homogeneity at ``NOISE_ALPHA``, as for categories)."""
    missing = [int(column.isna().sum()) for column in (reference, current)]
    if not any(missing):
        return 0.0, False
    moved = abs(missing[1] / len(current) - missing[0] / len(reference))
    if moved < threshold:
        return moved, False
    counts = [[missing[0], len(reference) - missing[0]], [missing[1], len(current) - missing[1]]]
    return moved, bool(chi2_contingency(counts).pvalue < NOISE_ALPHA)


def drift_summary(
    result: DriftResult,
    attribution: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> ReportSummary:
    """The lines a drift report opens with: which features drifted, and a table of every column
    by score, the prediction included; with ``attribution`` (each feature's mean |SHAP| in the
    window and in the reference), how far the model's reasons moved, and both columns."""
    drifted = result.drifted_features
    named = f": {', '.join(drifted)}" if drifted else ""
    prediction = result.prediction
    verdict = "n/a" if prediction is None else ("yes" if prediction.drifted else "no")
    headline = (
        f"{len(drifted)} of {len(result.features)} features drifted{named}; "
        f"prediction drift: {verdict} ({result.rows} rows against {result.reference_rows} "
        "reference rows)"
    )
    window, reference = attribution if attribution is not None else ({}, {})
    if attribution is not None:
        headline += f"; reasons moved {attribution_distance(window, reference):.2f} (0-1)"
    columns = [*result.features, *([prediction] if prediction is not None else [])]
    rows = tuple(
        (
            c.column if c is not prediction else f"{c.column} (model output)",
            c.method,
            c.score,
            c.threshold,
            c.drifted,
            *((window.get(c.column), reference.get(c.column)) if attribution else ()),
        )
        for c in sorted(columns, key=lambda c: c.score, reverse=True)
    )
    names = ("feature", "method", "score", "threshold", "drifted")
    if attribution is not None:
        names += ("mean |SHAP| here", "mean |SHAP| reference")
    return ReportSummary(headline, names, rows)


def compute_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: Sequence[str],
    prediction_column: str | None = None,
    categorical_prediction: bool = True,
    settings: DriftSettings = DriftSettings(),
) -> DriftResult:
    """Per-feature and prediction drift of ``current`` against ``reference``."""
    if len(current) < settings.min_rows or len(reference) < settings.min_reference_rows:
        return DriftResult("insufficient_data", len(current), len(reference))
    scores = tuple(column_drift(reference[f], current[f], False, settings) for f in features)
    prediction = None
    if prediction_column is not None:
        reference_predictions, current_predictions = (
            frame[prediction_column].astype(str)
            if categorical_prediction
            else frame[prediction_column]
            for frame in (reference, current)
        )
        prediction = column_drift(
            reference_predictions, current_predictions, categorical_prediction, settings
        )
    return DriftResult("ok", len(current), len(reference), scores, prediction)


def drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: Sequence[str],
    prediction_column: str | None = None,
    categorical_prediction: bool = True,
    settings: DriftSettings = DriftSettings(),
):
    """The Evidently report operators open (``.save_html``/``.save_json`` on the result). A
    column with no values in either frame (every one missing or infinite) is left out: Evidently
    cannot judge it and failed the whole report; the summary opening it (``drift_summary``) has
    it."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    current, reference = _infinite_as_missing(current), _infinite_as_missing(reference)

    numeric = list(features)
    categorical = []
    if prediction_column is not None:
        (categorical if categorical_prediction else numeric).append(prediction_column)

    def valued(column: str) -> bool:
        return bool(current[column].notna().any() and reference[column].notna().any())

    numeric, categorical = [c for c in numeric if valued(c)], [c for c in categorical if valued(c)]

    def value_drift(column: str) -> ValueDrift:
        """The same method and threshold as ``compute_drift`` uses."""
        method = settings.categorical_method if column in categorical else settings.numeric_method
        return ValueDrift(column=column, method=method, threshold=settings.threshold)

    columns = [*numeric, *categorical]
    metrics = [value_drift(column) for column in columns]

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for column in categorical:
            frame[column] = frame[column].astype(str)
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        return Dataset.from_pandas(frame, data_definition=definition)

    return Report(metrics).run(dataset(current), dataset(reference))
