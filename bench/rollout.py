"""Rollout benchmark: the A/A false-rollback rate (simulated) and the time from a breach to the
candidate's traffic reaching 0 (a real gateway and monitor).

Run: ``.venv/bin/python bench/rollout.py``. Part 1 runs the controller on synthetic evidence
(traffic/simulation.py) for ``--rollouts`` A/A rollouts under the test suite's policy and counts
rollbacks (the budget is the policy's alpha, 0.05). Part 2 starts a monitor and a gateway whose
canary fails half its requests from its first one, drives keyed traffic, and measures from the
candidate's first answer (the breach starts) to its last; ``--trials`` times, with the rollout's
``interval_s`` at 1 s. Results go to bench/results/rollout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from bench.harness import HOME, register_demo_models, write_results  # noqa: E402
from service.cli import MONITOR_SERVICE  # noqa: E402
from service.launch import running_server  # noqa: E402
from tests.test_rollout import HEALTHY, POLICY  # noqa: E402
from tests.test_server_rollout import drive, rollout_config  # noqa: E402
from traffic.simulation import simulate  # noqa: E402

os.environ["BENTOML_HOME"] = str(HOME / "bentoml")  # the tests' fixtures module points it elsewhere


def a_a(rollouts: int) -> dict:
    phases = Counter(
        simulate(POLICY, HEALTHY, HEALTHY, 200, 0.5, seed=seed, max_s=4000).phase
        for seed in range(rollouts)
    )
    rate = phases["rolled_back"] / rollouts
    print(f"A/A: {dict(phases)} of {rollouts}; false rollbacks {rate:.3f} (alpha {POLICY.alpha})")
    return {"rollouts": rollouts, "phases": dict(phases), "false_rollback_rate": rate}


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
    parser.add_argument("--rollouts", type=int, default=500)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    simulated = a_a(args.rollouts)
    register_demo_models()
    trials = []
    for _ in range(args.trials):
        with tempfile.TemporaryDirectory() as directory:
            trials.append(asyncio.run(breach_to_zero(Path(directory))))
    median = statistics.median(t["seconds"] for t in trials)
    print(f"breach to 0, median of {len(trials)}: {median:.2f} s")
    write_results("rollout", {"a_a": simulated, "breach_to_zero": trials, "median_s": median})


if __name__ == "__main__":
    main()
