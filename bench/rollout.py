"""Rollout benchmark: false rollbacks of healthy candidates and detection of bad ones with the
DEFAULT policy users get (simulated), and the time from a breach to zero traffic (a real gateway
and monitor).

Run: ``.venv/bin/python bench/rollout.py [--seeds 60]``. Part 1, A/A: the controller on synthetic
evidence (traffic/simulation.py) with the configuration's default guardrails and comparisons, steps
5/25/50% of 300 s, interval 10 s, for an hour; both arms 0.5% errors, a log-normal latency body
with a 20 ms median, and a slow mode (a share of requests at 8x the median, the same shape); rows
for 5, 50 and 500 requests/s and slow shares 0-2%, then heavier tails (a Pareto latency, a body of
sigma 1), shared error bursts, shared slowdowns, late labels and an operator's hour-long pause.
Part 2: evaluations from the start to the rollback of bad candidates (20% errors, 3x slower, NaN
outputs, every request failing). Part 3: breach to zero on real servers, ``--trials`` times.
Results go to bench/results/rollout.json; the tables are printed as BENCHMARKS.md shows them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.harness import HOME, register_demo_models, write_results  # noqa: E402
from service.launch import (
    MONITOR_SERVICE,  # noqa: E402
    running_server,  # noqa: E402
)
from tests.test_rollout import DEFAULT  # noqa: E402
from tests.test_server_rollout import drive, rollout_config  # noqa: E402
from traffic.simulation import ArmModel, Bursts, simulate  # noqa: E402

os.environ["BENTOML_HOME"] = str(HOME / "bentoml")  # the tests' fixtures module points it elsewhere
HOUR = 3600.0


def pareto(rng: np.random.Generator, n: int) -> np.ndarray:
    return 10.0 * (1 + rng.pareto(1.5, n))  # median ~16 ms, infinite variance


def arm(slow_share: float = 0.0, **fields) -> ArmModel:
    return ArmModel(error_rate=0.005, median_latency_ms=20, slow_share=slow_share, **fields)


A_A_ROWS = [
    *(
        (f"{rate} req/s, slow share {share:.1%}", rate, arm(share), {})
        for rate in (5, 50, 500)
        for share in (0.0, 0.005, 0.01, 0.02)
    ),
    *(
        (f"{rate} req/s, {name}", rate, model, scenario)
        for rate in (5, 50, 500)
        for name, model, scenario in (
            ("Pareto latency (shape 1.5)", arm(latency=pareto), {}),
            (
                "sigma 1 + 2% slow mode, labels 60 s late",
                arm(0.02, latency_sigma=1.0),
                {"label_lag_s": 60},
            ),
            (
                "shared error bursts (30% for 30 s, ~every 10 min)",
                arm(0.01),
                {"bursts": Bursts(600, 30, 0.3)},
            ),
            (
                "shared slowdowns (3x for 2 min, ~every 10 min)",
                arm(0.01),
                {"bursts": Bursts(600, 120, 0.005, latency_factor=3)},
            ),
            ("paused by an operator for an hour", arm(0.01), {"pauses": ((60, HOUR),)}),
        )
    ),
]
BAD = [
    ("20% errors", ArmModel(error_rate=0.2)),
    ("every request 3x slower", ArmModel(error_rate=0.005, median_latency_ms=60)),
    (
        "3x slower, sigma 1 tails",
        ArmModel(error_rate=0.005, median_latency_ms=60, latency_sigma=1.0),
    ),
    ("NaN outputs", ArmModel(error_rate=0.005, invalid_rate=1.0)),
    ("every request failing", ArmModel(error_rate=1.0)),
]


def _a_a(job: tuple) -> tuple[str, str]:
    name, rate, model, scenario, seed = job
    result = simulate(DEFAULT, model, model, rate, 0.3, max_s=HOUR, seed=seed, **scenario)
    return name, result.phase


def _bad(job: tuple) -> tuple[str, float, int | None]:
    name, model, rate, seed = job
    healthy = ArmModel(error_rate=0.005, latency_sigma=model.latency_sigma)
    result = simulate(DEFAULT, healthy, model, rate, max_s=1800, seed=seed)
    ended = result.evaluations_to_end if result.phase == "rolled_back" else None
    return name, rate, ended


def simulated(seeds: int) -> dict:
    with Pool(os.cpu_count() or 2) as pool:
        jobs = [(*row, seed) for row in A_A_ROWS for seed in range(seeds)]
        phases: dict[str, Counter] = {}
        for name, phase in pool.imap_unordered(_a_a, jobs, chunksize=4):
            phases.setdefault(name, Counter())[phase] += 1
        bad_jobs = [(n, m, r, s) for n, m in BAD for r in (5, 50, 500) for s in range(seeds)]
        ends: dict[tuple, list] = {}
        for name, rate, ended in pool.imap_unordered(_bad, bad_jobs, chunksize=4):
            ends.setdefault((name, rate), []).append(ended)
    print("\n| traffic and latency | rolled back | succeeded | paused (waiting for data) |")
    print("|---|---:|---:|---:|")
    rows = {}
    for name, *_ in A_A_ROWS:
        count = phases[name]
        rows[name] = dict(count)
        print(
            f"| {name} | **{count['rolled_back'] / seeds:.1%}** | {count['succeeded']} | "
            f"{count['paused'] + count['progressing'] + count['awaiting_approval']} |"
        )
    print("\n| bad candidate | req/s | evaluations to rollback: median / p90 / max | never |")
    print("|---|---:|---|---:|")
    detection = {}
    for (name, rate), values in sorted(ends.items(), key=lambda item: (item[0][0], item[0][1])):
        done = [v for v in values if v is not None]
        figures = [np.median(done), np.quantile(done, 0.9), max(done)] if done else []
        detection[f"{name} @ {rate}"] = {"evaluations": values}
        shown = " / ".join(f"{f:g}" for f in figures) or "-"
        print(f"| {name} | {rate} | {shown} | {len(values) - len(done)} |")
    return {"seeds": seeds, "a_a": rows, "detection": detection}


async def breach_to_zero(directory: Path) -> dict:
    config, port = rollout_config(directory, faults={"error_rate": 0.5}, interval_s=1.0)
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "model_store": str(HOME / "bentoml")}))
    with running_server(config, port=port, service=MONITOR_SERVICE), running_server(config) as url:
        async with aiohttp.ClientSession() as session:
            answers = await drive(session, url, seconds=8)
    candidate = [a for a in answers if a[3] == "candidate"]
    stable_errors = sum(1 for a in answers if a[3] == "stable" and a[2] != 200)
    seconds = candidate[-1][0] - candidate[0][0]
    print(
        f"breach to 0: {seconds:.2f} s; candidate answers {len(candidate)}; stable errors {stable_errors}"
    )
    return {
        "seconds": seconds,
        "candidate_requests": len(candidate),
        "stable_errors": stable_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=60, help="rollouts per row")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    results = simulated(args.seeds)
    register_demo_models()
    trials = []
    for _ in range(args.trials):
        with tempfile.TemporaryDirectory() as directory:
            trials.append(asyncio.run(breach_to_zero(Path(directory))))
    median = statistics.median(t["seconds"] for t in trials)
    print(f"breach to 0, median of {len(trials)}: {median:.2f} s")
    write_results("rollout", {**results, "breach_to_zero": trials, "median_s": median})


if __name__ == "__main__":
    main()
