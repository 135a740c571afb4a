"""Drift benchmark: one window against a reference, 30 numeric features and a predicted label.

Run: ``.venv/bin/python bench/drift.py``. Side by side in one run, for windows of 10,000 and
100,000 rows (reference: 10,000 rows; two features shifted by 0.5 sigma): (a) ``compute_drift``
(Evidently's stat tests per column, no widgets; what the scheduled runs and metrics use); (b) an
Evidently ``Report`` of explicit per-column ``ValueDrift`` metrics (the operators' report); (c)
Evidently's ``DataDriftPreset``. Best of 3 warm runs each. Target: 10k x 30 in at most 1 s.
Results go to bench/results/drift.json.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import write_results  # noqa: E402
from monitors.drift import compute_drift, drift_report  # noqa: E402

FEATURES = [f"f{i}" for i in range(30)]


def window(rows: int, seed: int, shifted=()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, len(FEATURES)))
    for column in shifted:
        values[:, column] += 0.5
    frame = pd.DataFrame(values, columns=FEATURES)
    frame["prediction"] = rng.choice(["benign", "malignant"], rows)
    return frame


def preset(current: pd.DataFrame, reference: pd.DataFrame):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=FEATURES, categorical_columns=["prediction"])
    return Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


def best_of(run, repeat: int = 3) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    warnings.filterwarnings("ignore")
    reference = window(10_000, seed=1)
    results = []
    for rows in (10_000, 100_000):
        current = window(rows, seed=2, shifted=(3, 7))
        flagged = compute_drift(current, reference, FEATURES, "prediction").drifted_features
        cases = {
            "compute_drift (Evidently stat tests, no widgets)": lambda c=current: compute_drift(
                c, reference, FEATURES, "prediction"
            ),
            "Report of 31 ValueDrift metrics": lambda c=current: drift_report(
                c, reference, FEATURES, "prediction"
            ),
            "Report with DataDriftPreset": lambda c=current: preset(c, reference),
        }
        for name, run in cases.items():
            seconds = best_of(run)
            results.append(
                {
                    "rows": rows,
                    "features": 30,
                    "method": name,
                    "seconds": seconds,
                    "flagged": flagged,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    write_results("drift", results)


if __name__ == "__main__":
    main()
