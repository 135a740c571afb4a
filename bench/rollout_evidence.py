"""Rollout evidence cost: what one look at a rollout's evidence takes as its step grows.

Run: ``.venv/bin/python bench/rollout_evidence.py [--units 10000 100000] [--runs 3] [--weight 50]``.
For each size, a SQLite monitor store holding a step of the default ``cancer`` policy (the
candidate at ``--weight`` percent) in which stable answered that many users and the candidate its
share of them, two requests each (so every count finds each user's first), and
``EvidenceGatherer.gather`` timed in CPU seconds (the rollout's tick thread; the stage window holds
the whole step, its epoch the last minute). Results go to
bench/results/rollout_evidence_<weight>.json.
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
from traffic.rollout_policy import RolloutPolicy  # noqa: E402

STARTED = 1_000_000.0


def policy(weight: float) -> RolloutPolicy:
    steps = [{"weight": weight}]
    return RolloutConfig(candidate="next", steps=steps).policy("cancer", "stable", 100.0)


def filled_store(directory: Path, users: int, weight: float) -> MonitorStore:
    """Stable: ``users`` users over an hour, the candidate its share of them (``weight``
    percent), each answered twice (log-normal latencies), each user's digest random hex."""
    store = MonitorStore.open_sqlite(directory / "monitor.sqlite3")
    rng = np.random.default_rng(0)
    candidate = max(1, round(users * weight / (100 - weight)))
    for variant, count in (("stable", users), ("next", candidate)):
        digests = [rng.bytes(8).hex() for _ in range(count)]
        latencies = rng.lognormal(np.log(0.010), 0.5, 2 * count)
        answers = rng.choice(["benign", "malignant"], 2 * count)
        spacing = 3600.0 / count
        for chunk in range(0, 2 * count, 5000):
            store.add_records(
                PredictionRecord(
                    f"cancer:{variant}{i}",
                    STARTED + (i % count) * spacing + (i // count),
                    "cancer",
                    variant,
                    f"cancer:{variant}",
                    [str(answers[i])],
                    float(latencies[i]),
                    unit=digests[i % count],
                )
                for i in range(chunk, min(2 * count, chunk + 5000))
            )
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--weight", type=float, default=50.0, help="the candidate's percent")
    args = parser.parse_args()
    judged = policy(args.weight)
    state = start(judged, "cancer:next", STARTED).state
    rows = []
    for units in args.units:
        with tempfile.TemporaryDirectory() as directory:
            store = filled_store(Path(directory), units, args.weight)
            gatherer = EvidenceGatherer(store, DriftSettings())
            seconds = []
            for _ in range(args.runs):
                started = time.process_time()
                evidence = gatherer.gather(judged, state, STARTED + 3600.0)
                seconds.append(time.process_time() - started)
            assert evidence.stage.stable.requests == units
        rows.append({"stable_users": units, "weight": args.weight, "cpu_s": seconds})
        print(f"{units:>9,} stable users: {' / '.join(f'{s:.2f}' for s in seconds)} s of CPU")
    write_results(f"rollout_evidence_{args.weight:g}", {"rows": rows})


if __name__ == "__main__":
    main()
