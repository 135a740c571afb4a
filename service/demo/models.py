"""Demo models trained on data sets bundled with scikit-learn (no downloads), exported to ONNX.

- ``cancer``: breast-cancer diagnosis (30 features, classes "malignant"/"benign"); v1 is a logistic
  regression (the stable model), v2 a small MLP (the candidate).
- ``diabetes``: disease progression (10 features), a ridge regression.
Each comes with a reference sample (its training rows with labels) and a held-out test split the
traffic driver replays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LABEL = "label"


@dataclass(frozen=True)
class DemoModel:
    """A built demo model: where its files are and what to register it as."""

    name: str
    version: str
    onnx_path: Path
    reference_path: Path
    test_path: Path


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _export(estimator, sample: np.ndarray, path: Path) -> None:
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None
    onx = to_onnx(estimator, sample[:1].astype(np.float32), options=options, target_opset=17)
    path.write_bytes(onx.SerializeToString())


def _tables(features: pd.DataFrame, labels, directory: Path, stem: str) -> tuple[Path, Path]:
    table = features.assign(**{LABEL: labels})
    train, test = train_test_split(table, test_size=0.3, random_state=7)
    reference, held_out = directory / f"{stem}-reference.csv", directory / f"{stem}-test.csv"
    train.to_csv(reference, index=False)
    test.to_csv(held_out, index=False)
    return reference, held_out


def build_demo_models(directory: Path) -> list[DemoModel]:
    """Train and export the demo models into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    built = []

    cancer = load_breast_cancer(as_frame=True)
    features = cancer.data.rename(columns=_snake).astype(np.float32)
    labels = np.asarray(cancer.target_names)[cancer.target]
    reference, test = _tables(features, labels, directory, "cancer")
    train = pd.read_csv(reference)
    x, y = train.drop(columns=[LABEL]).to_numpy(np.float32), train[LABEL].to_numpy()
    candidates = {
        "v1": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "v2": make_pipeline(
            StandardScaler(), MLPClassifier((64, 32), max_iter=600, random_state=0)
        ),
    }
    for version, estimator in candidates.items():
        estimator.fit(x, y)
        path = directory / f"cancer-{version}.onnx"
        _export(estimator, x, path)
        built.append(DemoModel("cancer", version, path, reference, test))

    diabetes = load_diabetes(as_frame=True)
    features = diabetes.data.astype(np.float32)
    reference, test = _tables(features, diabetes.target.astype(np.float32), directory, "diabetes")
    train = pd.read_csv(reference)
    x, y = train.drop(columns=[LABEL]).to_numpy(np.float32), train[LABEL].to_numpy()
    path = directory / "diabetes-v1.onnx"
    _export(Ridge(alpha=0.5).fit(x, y), x, path)
    built.append(DemoModel("diabetes", "v1", path, reference, test))
    return built
