"""Drift false alarms by feature shape: how often an undrifted column is flagged, and whether a
half-standard-deviation shift is.

Run: ``.venv/bin/python bench/drift_noise.py [windows]``. For each shape, windows drawn from the
reference's own distribution (nothing drifted) with reference and window of 200, 1,000 and 5,000
rows, ``windows`` (default 160) per pair of sizes, as issue 18 measured them. Side by side: the
project's rule (distance past the threshold and rank tests reject noise at p < 0.001), the rule it
replaced (distance past the threshold raised to 3.5 x sqrt(1/n + 1/m)), and a fixed 0.1. Power:
a shift by half the reference's standard deviation at 2,000 rows, 40 windows (reference 1,000 and
5,000 rows). Results go to bench/results/drift_noise.json.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import write_results  # noqa: E402
from monitors.drift import DriftSettings, column_drift  # noqa: E402

SHAPES = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "exponential": lambda rng, n: rng.exponential(size=n),
    "log-normal": lambda rng, n: rng.lognormal(0, 1, n),
    "pareto 1.5": lambda rng, n: rng.pareto(1.5, n) + 1,
    "pareto 1.1": lambda rng, n: rng.pareto(1.1, n) + 1,
    "student t 2": lambda rng, n: rng.standard_t(2, n),
    "cauchy": lambda rng, n: rng.standard_cauchy(n),
    "zero-inflated log-normal": lambda rng, n: np.where(
        rng.random(n) < 0.6, 0.0, rng.lognormal(3, 1.5, n)
    ),
    "poisson 2": lambda rng, n: rng.poisson(2, n).astype(float),
    "three levels": lambda rng, n: rng.integers(0, 3, n).astype(float),
    "bimodal": lambda rng, n: np.where(
        rng.random(n) < 0.3, rng.normal(-3, 0.5, n), rng.normal(2, 1, n)
    ),
    "binary 10%": lambda rng, n: (rng.random(n) < 0.1).astype(float),
}
SIZES = (200, 1000, 5000)
PLAIN = DriftSettings(numeric_method="wasserstein", categorical_method="jensenshannon")


def previous_rule(reference: pd.Series, window: pd.Series) -> bool:
    """What the project did before: the distance against 0.1 raised to 3.5 x sqrt(1/n + 1/m)."""
    floor = 3.5 * float(np.sqrt(1 / len(window) + 1 / len(reference)))
    return column_drift(reference, window, False, PLAIN).score >= max(0.1, floor)


def main() -> None:
    warnings.filterwarnings("ignore")
    windows = int(sys.argv[1]) if len(sys.argv) > 1 else 160
    results = []
    for shape, draw in SHAPES.items():
        rng = np.random.default_rng(zlib.crc32(shape.encode()))
        flagged = {"rank tests (now)": 0, "3.5 sqrt floor (before)": 0, "fixed 0.1": 0}
        checked, started = 0, time.perf_counter()
        for reference_rows in SIZES:
            reference = pd.Series(draw(rng, reference_rows), name="x")
            for window_rows in SIZES:
                for _ in range(windows):
                    window = pd.Series(draw(rng, window_rows), name="x")
                    flagged["rank tests (now)"] += column_drift(
                        reference, window, False, DriftSettings()
                    ).drifted
                    flagged["3.5 sqrt floor (before)"] += previous_rule(reference, window)
                    flagged["fixed 0.1"] += column_drift(reference, window, False, PLAIN).drifted
                    checked += 1
        detected = 0
        for reference_rows in (1000, 5000):
            reference = pd.Series(draw(rng, reference_rows), name="x")
            for _ in range(20):
                shifted = pd.Series(draw(rng, 2000) + 0.5 * reference.std(ddof=0), name="x")
                detected += column_drift(reference, shifted, False, DriftSettings()).drifted
        results.append(
            {
                "shape": shape,
                "windows": checked,
                "false_flag_rate": {rule: count / checked for rule, count in flagged.items()},
                "half_sd_shift_flagged": detected / 40,
                "seconds": time.perf_counter() - started,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    write_results("drift_noise", results)


if __name__ == "__main__":
    main()
