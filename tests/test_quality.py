"""Quality with Evidently matches a direct computation on a known set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitors import quality as quality_module
from monitors.quality import (
    QualityMemo,
    classification_quality,
    quality_summary,
    regression_quality,
)


def labeled_classifier(rows: int, accuracy: float, classes, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, rows)
    wrong = rng.random(rows) > accuracy
    others = np.array([classes[(list(classes).index(y) + 1) % len(classes)] for y in labels])
    return pd.DataFrame({"label": labels, "prediction": np.where(wrong, others, labels)})


def test_binary_accuracy_f1_and_per_class_match_a_direct_computation():
    frame = labeled_classifier(1000, 0.9, ["benign", "malignant"])
    result = classification_quality(frame, ["benign", "malignant"])
    correct = frame.label == frame.prediction
    assert result.status == "ok" and result.metrics["accuracy"] == pytest.approx(correct.mean())
    positive = frame.label == "malignant"
    predicted = frame.prediction == "malignant"
    precision = (positive & predicted).sum() / predicted.sum()
    recall = (positive & predicted).sum() / positive.sum()
    assert result.metrics["precision"] == pytest.approx(precision)
    assert result.metrics["recall"] == pytest.approx(recall)
    assert result.metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert set(result.per_class) == {"benign", "malignant"}
    assert result.per_class["malignant"]["recall"] == pytest.approx(recall)


def test_multiclass_accuracy():
    frame = labeled_classifier(900, 0.8, ["a", "b", "c"], seed=1)
    result = classification_quality(frame, ["a", "b", "c"])
    assert result.metrics["accuracy"] == pytest.approx((frame.label == frame.prediction).mean())
    assert set(result.per_class) == {"a", "b", "c"}


def test_few_labels_are_insufficient():
    frame = labeled_classifier(10, 0.9, ["benign", "malignant"])
    assert classification_quality(frame, ["benign", "malignant"]).status == "insufficient_data"


def test_regression_mae_and_rmse():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"label": rng.random(200), "prediction": rng.random(200)})
    result = regression_quality(frame)
    errors = frame.label - frame.prediction
    assert result.metrics["mae"] == pytest.approx(errors.abs().mean())
    assert result.metrics["rmse"] == pytest.approx(np.sqrt((errors**2).mean()))


def test_labels_as_large_as_the_gateway_takes_keep_a_regressors_figures_finite():
    """Labels of -1e308 and 1e308 (finite; anyone may label an answer of their own) made the
    labels' range overflow and failed the variant's quality on every run."""
    from service.codecs import MAX_MAGNITUDE

    rng = np.random.default_rng(4)
    labeled = pd.DataFrame(
        {"prediction": rng.normal(100, 10, 300), "label": rng.normal(100, 10, 300)}
    )
    labeled.loc[:1, "label"] = [MAX_MAGNITUDE, -MAX_MAGNITUDE]
    result = regression_quality(labeled)
    assert (
        result.status == "ok" and np.isfinite([result.metrics["mae"], result.metrics["rmse"]]).all()
    )


def test_a_regressors_answers_that_were_not_numbers_are_a_share_not_left_out_unseen():
    """The gateway answers null where a regressor's output was not finite. Left out of MAE and
    RMSE without a word, a model failing on a fifth of its inputs read as good as a sound one."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"label": rng.random(200), "prediction": rng.random(200)})
    failing = frame.assign(prediction=frame.prediction.where(np.arange(200) % 5 != 0, None))
    result = regression_quality(failing)
    answered = failing.dropna()
    assert result.rows == 200 and result.metrics["null_answers"] == pytest.approx(0.2)
    assert result.metrics["mae"] == pytest.approx(
        (answered.label - answered.prediction).abs().mean()
    )
    assert regression_quality(frame).metrics["null_answers"] == 0
    silent = regression_quality(frame.assign(prediction=None))
    assert silent.status == "ok" and silent.metrics == {"null_answers": 1.0}
    assert silent.report is None


def test_the_summary_reads_the_variant_beside_the_reference():
    classes = ["benign", "malignant"]
    current = classification_quality(labeled_classifier(400, 0.8, classes, seed=1), classes)
    reference = classification_quality(labeled_classifier(2000, 0.95, classes, seed=2), classes)
    summary = quality_summary(current, reference)
    accuracy = current.metrics["accuracy"]
    assert summary.headline == (
        f"accuracy on labels {accuracy:.3g} vs {reference.metrics['accuracy']:.3g} "
        "on the reference (400 labeled rows)"
    )
    first = summary.rows[0]
    assert first[:3] == ("accuracy", accuracy, reference.metrics["accuracy"])
    assert first[3] == pytest.approx(accuracy - reference.metrics["accuracy"]) and first[3] < 0
    assert [row[0] for row in summary.rows] == ["accuracy", "f1", "precision", "recall"]


@pytest.fixture
def computations(monkeypatch) -> list[int]:
    """The rows of each quality computed (not found in a memo), in order."""
    computed: list[int] = []
    for name in ("classification_quality", "regression_quality"):
        real = getattr(quality_module, name)

        def counted(labeled, *args, real=real, **kwargs):
            computed.append(len(labeled))
            return real(labeled, *args, **kwargs)

        monkeypatch.setattr(quality_module, name, counted)
    return computed


def test_the_memo_computes_again_only_what_changed(computations):
    classes = ["benign", "malignant"]
    memo = QualityMemo()
    frame = labeled_classifier(300, 0.9, classes)
    first = memo(frame, classes, 50)
    assert memo(frame.copy(), classes, 50) is first and computations == [300]
    relabeled = frame.copy()
    relabeled.loc[0, "label"] = "malignant" if frame.loc[0, "label"] == "benign" else "benign"
    changed = memo(relabeled, classes, 50)
    assert computations == [300, 300]
    assert changed.metrics["accuracy"] == pytest.approx(
        (relabeled.label == relabeled.prediction).mean()
    )
    assert changed.metrics["accuracy"] != first.metrics["accuracy"]
    memo(frame.iloc[:-1], classes, 50)  # one row fewer (a row aged out of the window)
    memo(frame, classes, 60)  # another floor
    assert computations == [300, 300, 299, 300]


def test_the_memo_tells_types_apart_and_forgets_what_a_run_did_not_use(computations):
    memo = QualityMemo()
    numbers = pd.DataFrame({"prediction": [1.0, 2.0, 3.0] * 20, "label": [1, 2, 4] * 20})
    as_text = numbers.astype(str)
    assert memo(numbers, None, 50).metrics["mae"] == pytest.approx(1 / 3)
    memo(as_text, None, 50)  # the same numbers once parsed, but not the same input
    assert computations == [60, 60]
    memo.next_run()  # both were used in the run that ended: kept
    memo(numbers, None, 50)
    memo.next_run()  # ``as_text`` was not asked for in that run: forgotten
    memo(as_text, None, 50)
    memo(numbers, None, 50)
    assert computations == [60, 60, 60]
