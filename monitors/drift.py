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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    result = test(reference, current, column_type, settings.threshold)
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
    metrics = [
        ValueDrift(column=f, method=settings.numeric_method, threshold=settings.threshold)
        for f in numeric
    ]
    columns = list(numeric)
    if prediction_column is not None:
        columns.append(prediction_column)
        if categorical_prediction:
            categorical.append(prediction_column)
        else:
            numeric.append(prediction_column)
        method = settings.categorical_method if categorical_prediction else settings.numeric_method
        metrics.append(
            ValueDrift(column=prediction_column, method=method, threshold=settings.threshold)
        )

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for column in categorical:
            frame[column] = frame[column].astype(str)
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        return Dataset.from_pandas(frame, data_definition=definition)

    return Report(metrics).run(dataset(current), dataset(reference))
