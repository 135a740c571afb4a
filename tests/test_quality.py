"""Quality with Evidently matches a direct computation on a known set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitors.quality import classification_quality, quality_summary, regression_quality


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
