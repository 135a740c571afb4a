"""Rollout evidence cost: what one look at a rollout's evidence takes as its step grows.

Run: ``.venv/bin/python bench/rollout_evidence.py [--units 10000 100000] [--runs 3]``. For each
size, a SQLite monitor store holding a 50% step of the default ``cancer`` policy in which each arm
answered that many users, two requests each (so every count finds each user's first), and
``EvidenceGatherer.gather`` timed in CPU seconds (the rollout's tick thread; the stage window holds
the whole step, its epoch the last minute). Results go to bench/results/rollout_evidence.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.harness import write_results  # noqa: E402
from monitors.drift import DriftSettings  # noqa: E402
from monitors.records import PredictionRecord  # noqa: E402
from monitors.store import MonitorStore  # noqa: E402
from service.config import RolloutConfig  # noqa: E402
from service.monitor.evidence import EvidenceGatherer  # noqa: E402
from traffic.rollout import start  # noqa: E402

STARTED = 1_000_000.0
POLICY = RolloutConfig(candidate="next", steps=[{"weight": 50}]).policy("cancer", "stable", 100.0)


def filled_store(directory: Path, units: int) -> MonitorStore:
    """Each arm: ``units`` users over an hour, each answered twice (log-normal latencies)."""
    store = MonitorStore.open_sqlite(directory / "monitor.sqlite3")
    rng = np.random.default_rng(0)
    spacing = 3600.0 / units
    for variant in ("stable", "next"):
        latencies = rng.lognormal(np.log(0.010), 0.5, 2 * units)
        answers = rng.choice(["benign", "malignant"], 2 * units)
        for chunk in range(0, 2 * units, 5000):
            store.add_records(
                PredictionRecord(
                    f"cancer:{variant}{i}",
                    STARTED + (i % units) * spacing + (i // units),
                    "cancer",
                    variant,
                    f"cancer:{variant}",
                    [str(answers[i])],
                    float(latencies[i]),
                    unit=f"{i % units:032x}",
                )
                for i in range(chunk, min(2 * units, chunk + 5000))
            )
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    state = start(POLICY, "cancer:next", STARTED).state
    rows = []
    for units in args.units:
        with tempfile.TemporaryDirectory() as directory:
            gatherer = EvidenceGatherer(filled_store(Path(directory), units), dict, DriftSettings())
            seconds = []
            for _ in range(args.runs):
                started = time.process_time()
                evidence = gatherer.gather(POLICY, state, STARTED + 3600.0)
                seconds.append(time.process_time() - started)
            assert evidence.stage.stable.requests == units
        rows.append({"units_per_arm": units, "cpu_s": seconds})
        print(f"{units:>9,} users per arm: {' / '.join(f'{s:.2f}' for s in seconds)} s of CPU")
    write_results("rollout_evidence", {"rows": rows})


if __name__ == "__main__":
    main()
