"""Model quality on labeled rows, computed with Evidently: classification or regression.

Classification: accuracy, F1, precision and recall (of the positive class, the model's second
class, for binary models; macro averages otherwise) and F1/precision/recall per class. Regression:
MAE and RMSE, and the share of answers that were not numbers. Fewer labeled rows than
``min_rows`` give "insufficient_data", never a figure.

``QualityMemo`` gives the last result again while the labeled rows are the same: a monitor analyses
every few seconds, labels come far less often, and Evidently's computation on a full window is
most of a run's CPU (0.3-0.4 s for 10,000 labeled rows here; BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import pandas as pd

from monitors.reports import ReportSummary

Status = Literal["ok", "insufficient_data"]


@dataclass(frozen=True)
class QualityResult:
    status: Status
    rows: int
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    report: object = field(default=None, compare=False, repr=False)
    """The Evidently run result (``save_html``/``save_json``), when there was a verdict."""


def _by_label(value: object) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(value).items()} if isinstance(value, dict) else {}


def classification_quality(
    labeled: pd.DataFrame, classes: Sequence, min_rows: int = 50
) -> QualityResult:
    """Quality of ``labeled`` (columns ``prediction`` and ``label``) for a classifier."""
    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Report,
    )
    from evidently.metrics import (
        Accuracy,
        F1ByLabel,
        F1Score,
        Precision,
        PrecisionByLabel,
        Recall,
        RecallByLabel,
    )

    if len(labeled) < min_rows:
        return QualityResult("insufficient_data", len(labeled))
    frame = labeled[["prediction", "label"]].astype(str)
    names = [str(c) for c in classes]
    if len(names) == 2:
        task = BinaryClassification(
            target="label", prediction_labels="prediction", pos_label=names[1]
        )
    else:
        task = MulticlassClassification(target="label", prediction_labels="prediction")
    definition = DataDefinition(categorical_columns=["label", "prediction"], classification=[task])
    metrics = [Accuracy(), F1Score(), Precision(), Recall()]
    by_label = [F1ByLabel(), PrecisionByLabel(), RecallByLabel()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = Report(metrics + by_label).run(
            Dataset.from_pandas(frame, data_definition=definition), None
        )
    values = [m["value"] for m in report.dict()["metrics"]]
    scores = dict(zip(["accuracy", "f1", "precision", "recall"], map(float, values[:4])))
    per_class: dict[str, dict[str, float]] = {}
    for name, value in zip(["f1", "precision", "recall"], values[4:]):
        for label, score in _by_label(value).items():
            per_class.setdefault(label, {})[name] = score
    return QualityResult("ok", len(labeled), scores, per_class, report)


def regression_quality(labeled: pd.DataFrame, min_rows: int = 50) -> QualityResult:
    """MAE and RMSE of ``labeled`` (numeric ``prediction`` and ``label``) for a regressor, over
    the answers that were numbers, and ``null_answers``: the share that were not (the gateway
    answers null where the model's output was not finite). No error figure can take those in,
    and leaving them out silently made a model that fails on a fifth of its inputs look as
    good as one that does not."""
    from evidently import DataDefinition, Dataset, Regression, Report
    from evidently.metrics import MAE, RMSE

    numbers = labeled[["prediction", "label"]].apply(pd.to_numeric, errors="coerce")
    scored = numbers[numbers["label"].notna()]  # a label that is not a number: left out
    if len(scored) < min_rows:
        return QualityResult("insufficient_data", len(scored))
    frame = scored.dropna()
    null_answers = 1 - len(frame) / len(scored)
    if frame.empty:
        return QualityResult("ok", len(scored), {"null_answers": null_answers})
    definition = DataDefinition(
        numerical_columns=["label", "prediction"],
        regression=[Regression(target="label", prediction="prediction")],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = Report([MAE(), RMSE()]).run(
            Dataset.from_pandas(frame, data_definition=definition), None
        )
    mae, rmse = (m["value"] for m in report.dict()["metrics"])
    mae = mae["mean"] if isinstance(mae, dict) else mae
    figures = {"mae": float(mae), "rmse": float(rmse), "null_answers": null_answers}
    return QualityResult("ok", len(scored), figures, {}, report)


def quality(labeled: pd.DataFrame, classes: Sequence | None, min_rows: int) -> QualityResult:
    """A classifier's quality when it has ``classes``, a regressor's when they are None."""
    if classes is None:
        return regression_quality(labeled, min_rows)
    return classification_quality(labeled, classes, min_rows)


class QualityMemo:
    """``quality`` remembered by its inputs from one run of analyses to the next.

    A result is found again by a digest of exactly what it was computed from (each labeled row's
    prediction and label, in order, the classes and ``min_rows``), so a result is reused only
    where computing it again would give the same. What the last run did not ask for is forgotten
    when the next one starts (``next_run``), so the memo holds about one result per variant."""

    def __init__(self) -> None:
        self._last_run: dict[bytes, QualityResult] = {}
        self._this_run: dict[bytes, QualityResult] = {}

    def __call__(
        self, labeled: pd.DataFrame, classes: Sequence | None, min_rows: int
    ) -> QualityResult:
        if len(labeled) < min_rows:  # nothing to compute
            return quality(labeled, classes, min_rows)
        key = _digest(labeled, classes, min_rows)
        found = self._this_run.get(key) or self._last_run.get(key)
        if found is None:
            found = quality(labeled, classes, min_rows)
        self._this_run[key] = found
        return found

    def next_run(self) -> None:
        """A run of analyses is over: keep what it used, forget the rest."""
        self._last_run, self._this_run = self._this_run, {}


def _digest(labeled: pd.DataFrame, classes: Sequence | None, min_rows: int) -> bytes:
    """A digest of ``quality``'s inputs. MessagePack keeps each value's type and length, so no
    two different inputs encode the same (a label "1" is not a label 1)."""
    encoded = msgspec.msgpack.encode(
        [
            labeled["prediction"].tolist(),
            labeled["label"].tolist(),
            None if classes is None else [str(c) for c in classes],
            min_rows,
        ]
    )
    return hashlib.blake2b(encoded, digest_size=20).digest()


def quality_summary(current: QualityResult, reference: QualityResult | None) -> ReportSummary:
    """The lines a quality report opens with: the variant's figures beside the reference's (the
    model's own reference sample, scored when it was registered)."""
    theirs = reference.metrics if reference is not None else {}
    rows = tuple(
        (name, value, theirs.get(name), None if name not in theirs else value - theirs[name])
        for name, value in current.metrics.items()
    )
    first, value = next(iter(current.metrics.items()))
    against = f" vs {theirs[first]:.3g} on the reference" if first in theirs else ""
    headline = f"{first} on labels {value:.3g}{against} ({current.rows} labeled rows)"
    return ReportSummary(headline, ("metric", "this variant", "reference", "difference"), rows)
