"""Input and prediction drift of a window against a reference sample, computed with Evidently.

Two paths, because they have different costs:
- ``compute_drift`` (every scheduled run, feeds the metrics): Evidently's own statistical tests
  (``evidently.legacy.calculations.stattests``), one per column, without building Evidently's
  plotly widgets, which are ~75% of a ``Report`` run's time (profiled: bench/drift.py).
- ``drift_report`` (what operators open): a full Evidently ``Report`` of explicit per-column
  ``ValueDrift`` metrics with the same methods and thresholds, saved as HTML and JSON.

Defaults: normed Wasserstein distance for numeric columns and Jensen-Shannon distance for
categorical ones (a predicted label), drift when the score is >= 0.1. Evidently's automatic choice
switches to K-S p-values for reference samples of up to 1,000 rows, and p-values flag every column
on big windows (see ../shared/reference/monitoring.md); distances keep one meaning at any size. A
window smaller than ``min_rows`` gives "insufficient_data", never a verdict.

A distance between two finite samples is never zero, even from one distribution: its noise shrinks
like sqrt(1/n + 1/m) for n window and m reference rows. A fixed 0.1 would flag noise on windows of a
few hundred rows, so each column's threshold is raised to its noise floor, the distance that two
samples of these sizes from one distribution exceed about once in a thousand times
(``noise_threshold``). Big windows keep the configured threshold; small ones need a bigger shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType

Status = Literal["ok", "insufficient_data"]


@dataclass(frozen=True)
class DriftSettings:
    """Which tests, what threshold, how many rows make a verdict."""

    numeric_method: str = "wasserstein"
    categorical_method: str = "jensenshannon"
    threshold: float = 0.1
    min_rows: int = 200
    drifted_share_alarm: float = 0.5
    noise_floor: bool = True
    """Raise each column's threshold to its sampling-noise floor (see ``noise_threshold``)."""


WASSERSTEIN_NOISE = 3.5
"""Normed Wasserstein distance between two samples of one distribution, in units of
sqrt(1/n + 1/m): simulated 99.9th percentiles are 2.7-3.3 for normal, exponential and uniform data
and up to 4 for log-normal (300 draws per size, n and m from 200 to 5,000)."""


def noise_threshold(
    reference: pd.Series, current: pd.Series, categorical: bool, settings: DriftSettings
) -> float:
    """The configured threshold, raised to what sampling noise alone reaches at these sizes.

    Numeric: ``WASSERSTEIN_NOISE`` x sqrt(1/n + 1/m). Categorical, k categories: the Jensen-Shannon
    distance is about sqrt(chi2(k-1) / 8) x sqrt(1/n + 1/m) under no drift, so the 99.9th percentile
    of chi2 with k-1 degrees of freedom gives the floor (checked by simulation for k = 2 and 3).
    """
    if not settings.noise_floor:
        return settings.threshold
    scale = float(np.sqrt(1 / max(len(current), 1) + 1 / max(len(reference), 1)))
    if categorical:
        from scipy.stats import chi2

        categories = max(pd.concat([reference, current]).nunique(), 2)
        noise = float(np.sqrt(chi2.ppf(0.999, categories - 1) / 8)) * scale
    else:
        noise = WASSERSTEIN_NOISE * scale
    return max(settings.threshold, noise)


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
    """Evidently's drift test for one column."""
    column_type = ColumnType.Categorical if categorical else ColumnType.Numerical
    method = settings.categorical_method if categorical else settings.numeric_method
    test = get_stattest(reference, current, column_type, method)
    threshold = noise_threshold(reference, current, categorical, settings)
    result = test(reference, current, column_type, threshold)
    return ColumnDrift(
        str(current.name),
        method,
        float(result.drift_score),
        result.actual_threshold,
        bool(result.drifted),
    )


def compute_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: Sequence[str],
    prediction_column: str | None = None,
    categorical_prediction: bool = True,
    settings: DriftSettings = DriftSettings(),
) -> DriftResult:
    """Per-feature and prediction drift of ``current`` against ``reference``."""
    if len(current) < settings.min_rows or len(reference) < settings.min_rows:
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
    """The Evidently report operators open (``.save_html``/``.save_json`` on the result)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    numeric = list(features)
    categorical = []
    if prediction_column is not None:
        (categorical if categorical_prediction else numeric).append(prediction_column)

    def value_drift(column: str) -> ValueDrift:
        """The same method and (noise-raised) threshold as ``compute_drift`` uses."""
        is_categorical = column in categorical
        ours, theirs = (
            frame[column].astype(str) if is_categorical else frame[column]
            for frame in (reference, current)
        )
        method = settings.categorical_method if is_categorical else settings.numeric_method
        threshold = noise_threshold(ours, theirs, is_categorical, settings)
        return ValueDrift(column=column, method=method, threshold=threshold)

    columns = [*features, *([prediction_column] if prediction_column is not None else [])]
    metrics = [value_drift(column) for column in columns]

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for column in categorical:
            frame[column] = frame[column].astype(str)
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        return Dataset.from_pandas(frame, data_definition=definition)

    return Report(metrics).run(dataset(current), dataset(reference))
