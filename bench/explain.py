"""Explanation cost: seconds (and CPU seconds) per row by model width and background size, as
``/explain`` computes them (service/gateway/explain.py ``attributions``: SHAP's permutation
explainer, independent masker over the reference sample, onnxruntime on the CPU), in this process,
after one warm-up call.

Run: ``.venv/bin/python bench/explain.py``. The demo's cancer:v1 (30 features, logistic
regression), cancer:v2 (30 features, an MLP) and diabetes:v1 (10 features, ridge), 8 rows per
call, background 50, 100 (the default) and 200 rows, default evaluations (10 permutations). It
also reports the process's first call (one row), which pays for importing SHAP and whatever its
first use costs: what the first ``/explain`` and the monitor's first attribution run wait for.
Results go to bench/results/explain.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import register_demo_models, write_results  # noqa: E402
from service import registry  # noqa: E402
from service.explanations import PERMUTATIONS, attributions  # noqa: E402

ROWS = 8


def main() -> None:
    register_demo_models()
    results = []
    first_call: dict | None = None
    for tag in ("cancer:v1", "cancer:v2", "diabetes:v1"):
        card = registry.load_card(tag)
        reference = registry.load_reference(tag)
        features = reference[list(card.feature_names)].head(ROWS).to_numpy(dtype="float32")
        target = str(card.class_labels[0]) if card.task == "classification" else "value"
        for background in (50, 100, 200):
            started, cpu = time.perf_counter(), time.process_time()
            attributions(card, features[:1], [target], background, 0)  # warm: load, import
            if first_call is None:
                first_call = {
                    "model": tag,
                    "first_call_seconds": time.perf_counter() - started,
                    "first_call_cpu_seconds": time.process_time() - cpu,
                }
                print(json.dumps(first_call), flush=True)
            started, cpu = time.perf_counter(), time.process_time()
            attributions(card, features, [target] * ROWS, background, 0)
            per_row = (time.perf_counter() - started) / ROWS
            cpu_per_row = (time.process_time() - cpu) / ROWS  # every thread of the process
            results.append(
                {
                    "model": tag,
                    "features": len(card.feature_names),
                    "background_rows": background,
                    "evaluations_per_row": 2 * PERMUTATIONS * len(card.feature_names) + 1,
                    "seconds_per_row": per_row,
                    "cpu_seconds_per_row": cpu_per_row,
                    "ms_per_row_and_feature": per_row * 1000 / len(card.feature_names),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    write_results("explain", {"first_call": first_call, "per_row": results})


if __name__ == "__main__":
    main()
