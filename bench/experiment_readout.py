"""How long an experiment's readout takes as its window grows: the monitor computes it every
``monitor.interval_s`` (``GET /admin/experiments/{endpoint}`` answers the newest one).

Run: ``.venv/bin/python bench/experiment_readout.py [requests ...]`` (default 100,000 and
1,000,000). For each size, a monitor store in a temporary directory gets that many records of two
arms from a tenth as many users (the unit), a binary reward for every request and a continuous one
for a tenth of them; then the time of the store's per-unit sums (``unit_totals``, in SQLite), of
its look for arms answered by two models (``models_answering``) and of the statistics
(``readout``), each the best of three. Results go to
bench/results/experiment_readout.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import write_results  # noqa: E402
from monitors.experiments import Design, MetricSpec, UnitTotals, readout  # noqa: E402
from monitors.records import PredictionRecord  # noqa: E402
from monitors.store import MonitorStore  # noqa: E402

ARMS = ("stable", "candidate")
REWARDS = {"converted": 0.0, "revenue": None}
BATCH = 50_000


def fill(store: MonitorStore, requests: int, rng: np.random.Generator) -> None:
    users = max(2, requests // 10)
    for start in range(0, requests, BATCH):
        size = min(BATCH, requests - start)
        unit = rng.integers(0, users, size)
        records = [
            PredictionRecord(
                request_id=f"ab:{start + i:032x}",
                at=1000.0 + start + i,
                endpoint="ab",
                variant=ARMS[u % 2],
                model=f"ab:{ARMS[u % 2]}",
                predictions=[1],
                latency_s=0.002,
                unit=f"{u:016x}",
            )
            for i, u in enumerate(unit)
        ]
        store.add_records(records)
        converted = rng.random(size) < 0.1
        rewards = [(r.request_id, "converted", float(c), 1e12) for r, c in zip(records, converted)]
        rewards += [(r.request_id, "revenue", 20.0, 1e12) for r in records[::10]]
        store.add_rewards(rewards)


def best_of_three(work) -> tuple[float, object]:
    times, result = [], None
    for _ in range(3):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def measure(requests: int) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        store = MonitorStore.open_sqlite(Path(directory) / "monitor.sqlite3")
        fill(store, requests, rng)
        until = 1000.0 + requests
        summing_s, totals = best_of_three(
            lambda: store.unit_totals("ab", ARMS, 0.0, until, REWARDS)
        )
        models_s, _ = best_of_three(lambda: store.models_answering("ab", ARMS, 0.0, until))
        design = Design(
            "stable",
            ("candidate",),
            {"stable": 50, "candidate": 50},
            "converted",
            tuple(MetricSpec(m) for m in (*REWARDS, "error_rate")),
        )

        def statistics():
            per_arm = {arm: totals[totals.variant == arm] for arm in ARMS}
            data = {
                m: {a: UnitTotals.of(f[f"{m}_sum"], f[f"{m}_count"]) for a, f in per_arm.items()}
                for m in REWARDS
            }
            data["error_rate"] = {
                a: UnitTotals.of(f.failed, f.requests) for a, f in per_arm.items()
            }
            return readout(design, {a: len(f) for a, f in per_arm.items()}, data, 3600.0)

        statistics_s, result = best_of_three(statistics)
    row = {
        "requests": requests,
        "units": int(sum(result.sample_ratio.units.values())),
        "unit_totals_s": round(summing_s, 3),
        "models_answering_s": round(models_s, 3),
        "readout_s": round(statistics_s, 3),
    }
    print(row)
    return row


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    write_results("experiment_readout", [measure(n) for n in sizes])
