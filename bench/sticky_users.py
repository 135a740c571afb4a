"""Sticky users: false rollbacks of a healthy candidate when a rollout counts requests, and when it
counts each user once (the default, ``rollout.unit: key``).

Routing is sticky, so all of a user's requests land in one arm. Users differ: some send far more
requests than others, some send inputs the model gets wrong more often. Taken as independent, one
heavy, hard user moves a whole arm. This simulates A/A rollouts with the DEFAULT policy's accuracy
comparison (margin 0.03, its share of ``alpha`` at the first step, a look every 10 s for the
step's 10 minutes): users with Zipf-distributed request counts, each with its own share of wrong
answers (a Beta of mean 0.1), 5% of them on the candidate, 30% of answers labeled. Each scenario
is judged on every labeled request (``unit: request``) and on each user's first labeled request
(``unit: key``, what monitors/store.py counts), on the same draws.

Run: ``.venv/bin/python bench/sticky_users.py [--seeds 200]``; prints the table BENCHMARKS.md shows.
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from service.config import RolloutConfig  # noqa: E402
from traffic.rollout import start, windows  # noqa: E402
from traffic.rollout_checks import (  # noqa: E402
    ArmCounts,
    Evidence,
    Window,
    check_comparison,
    comparison_alpha,
)

STEP_S, LOOK_S, LABELED, CANDIDATE_SHARE, WRONG = 600, 10, 0.3, 0.05, 0.1
POLICY = RolloutConfig(candidate="next", steps=[{"weight": 5, "min_duration_s": STEP_S}]).policy(
    "e", "stable", 100.0
)
ACCURACY = next(c for c in POLICY.comparisons if c.metric == "accuracy")
SCENARIOS = [  # (requests/s, users, Zipf exponent, Beta concentration of users' wrong shares)
    (500, 1_000_000, 0.5, 2.0),
    (50, 100_000, 0.7, 2.0),
    (50, 20_000, 1.0, 2.0),
    (500, 100_000, 0.9, 2.0),
    (500, 20_000, 1.0, 10.0),
    (500, 20_000, 1.0, 2.0),
    (500, 20_000, 1.2, 2.0),
]


def one_rollout(args: tuple) -> tuple[str, str]:
    """Outcome of one A/A step (FAIL, PASS or INSUFFICIENT at its end) counted by request and by
    user."""
    (rate, users, zipf, concentration), seed = args
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1) ** zipf
    weights /= weights.sum()
    wrong = rng.beta(WRONG * concentration, (1 - WRONG) * concentration, users)
    on_candidate = rng.random(users) < CANDIDATE_SHARE
    labeled = int(rate * STEP_S * LABELED)
    who = rng.choice(users, size=labeled, p=weights)
    bad = rng.random(labeled) < wrong[who]
    candidate = on_candidate[who]
    first = np.zeros(labeled, dtype=bool)
    first[np.unique(who, return_index=True)[1]] = True
    state = start(POLICY, "e:v2", 0.0).state
    outcomes = {}
    for name, counted in (("request", np.ones(labeled, dtype=bool)), ("key", first)):
        outcome = "INSUFFICIENT"
        for look in range(1, STEP_S // LOOK_S + 1):
            seen = np.arange(labeled) < labeled * look * LOOK_S // STEP_S
            arms = [counted & seen & candidate, counted & seen & ~candidate]
            counts = [ArmCounts(labeled=int(a.sum()), correct=int((a & ~bad).sum())) for a in arms]
            evidence = Evidence(stage=Window(candidate=counts[0], stable=counts[1]))
            alpha = comparison_alpha(POLICY, windows(POLICY, state, look * LOOK_S))
            outcome = check_comparison(ACCURACY, evidence, alpha).outcome
            if outcome == "FAIL":
                break
        outcomes[name] = outcome
    return outcomes["request"], outcomes["key"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    seeds = parser.parse_args().seeds
    print(
        "| requests/s | users | Zipf | users' wrong shares (Beta concentration) | top user's share "
        "| by request: false FAIL / PASS | by user: false FAIL / PASS |"
    )
    print("|---:|---:|---:|---:|---:|---|---|")
    with Pool() as pool:
        for scenario in SCENARIOS:
            results = pool.map(one_rollout, [(scenario, s) for s in range(seeds)])
            rate, users, zipf, concentration = scenario
            top = 1.0 / (1.0 / np.arange(1, users + 1) ** zipf).sum()
            cells = []
            for i in (0, 1):
                fails = sum(r[i] == "FAIL" for r in results)
                passes = sum(r[i] == "PASS" for r in results)
                cells.append(f"{fails / seeds:.1%} / {passes / seeds:.0%}")
            print(
                f"| {rate} | {users:,} | {zipf} | {concentration:g} | {top:.2%} "
                f"| {cells[0]} | {cells[1]} |"
            )


if __name__ == "__main__":
    main()
