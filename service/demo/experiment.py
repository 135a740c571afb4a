"""The demo's A/B test on ``cancer``: stable (v1) against candidate (v2) at 50/50, keyed by user,
with a synthetic business reward (a "conversion" after each answer) that truly favours the
candidate; then the readout, as ``GET /admin/experiments/cancer`` gives it.

The experiment is stopped at the end (its readout stays); ``POST /admin/experiments/cancer/start``
opens a new window with the weights as they are then.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from pathlib import Path

import aiohttp
import pandas as pd

from service.demo.models import LABEL

ENDPOINT = "cancer"
WEIGHTS = {"stable": 50, "candidate": 50}
CONVERSION = {"stable": 0.10, "candidate": 0.15}
"""The synthetic reward: each answer converts with its arm's probability."""
USERS = 3000
"""Enough for the readout to find the lift the rates build in, whatever the seed (1,500 users
missed it about one seed in three; tests/test_demo_experiment.py)."""
REQUESTS_PER_USER = 2
CONCURRENCY = 16
EXPERIMENT = {
    "arms": ["stable", "candidate"],
    "rewards": {"converted": {"kind": "binary"}},
    "primary": "converted",
}
"""The ``experiment:`` section the demo's gateway.yaml gives the cancer endpoint (guardrails:
the defaults, error rate and latency)."""


def _admin(base_url: str, token: str | None, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base_url}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def plan(row_count: int, seed: int) -> list[tuple[str, int, float]]:
    """Every request the demo sends: (user, which of ``row_count`` rows it sends, the uniform its
    conversion is drawn from). All of it is drawn before the first request, so the rewards, and
    the readout, depend on the seed alone: drawn by the concurrent callers as their answers came
    back, they followed the answers' order, and the same demo's verdict differed from run to run."""
    rng = random.Random(seed)
    users = [f"ab-user-{u}" for u in range(USERS) for _ in range(REQUESTS_PER_USER)]
    rng.shuffle(users)
    return [(user, rng.randrange(row_count), rng.random()) for user in users]


async def _traffic(base_url: str, rows: pd.DataFrame, seed: int) -> list[dict]:
    """Every user's requests; a reward for each answer, drawn at its arm's conversion rate."""
    features = rows.drop(columns=LABEL).astype(float).values.tolist()
    queue = plan(len(features), seed)
    rewards: list[dict] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            user, row, draw = queue.pop()
            async with session.post(
                f"{base_url}/predict/{ENDPOINT}",
                json={"instances": [features[row]]},
                headers={"x-user-id": user},
            ) as answer:
                body = await answer.json()
            if answer.status != 200:
                continue
            converted = int(draw < CONVERSION[body["variant"]])
            rewards.append(
                {"request_id": body["request_id"], "metric": "converted", "value": converted}
            )

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        for start in range(0, len(rewards), 1000):
            async with session.post(
                f"{base_url}/feedback", json={"rewards": rewards[start : start + 1000]}
            ) as answer:
                answer.raise_for_status()
    return rewards


def run_experiment(base_url: str, models_dir: Path, admin_token: str | None) -> dict:
    """Run the A/B test and print its readout; returns the readout."""
    print(
        f"A/B test on {ENDPOINT}: stable vs candidate at 50/50 by user, {USERS} users x "
        f"{REQUESTS_PER_USER} requests; synthetic conversion {CONVERSION['stable']:.0%} vs "
        f"{CONVERSION['candidate']:.0%} per answer"
    )
    _admin(
        base_url, admin_token, "PUT", f"/admin/endpoints/{ENDPOINT}/weights", {"weights": WEIGHTS}
    )
    current = _admin(base_url, admin_token, "GET", f"/admin/experiments/{ENDPOINT}")
    if current.get("status") == "running":
        _admin(base_url, admin_token, "POST", f"/admin/experiments/{ENDPOINT}/stop")
    _admin(base_url, admin_token, "POST", f"/admin/experiments/{ENDPOINT}/start")
    rows = pd.read_csv(models_dir / "cancer-reference.csv")
    rewards = asyncio.run(_traffic(base_url, rows, seed=3))
    print(f"  {len(rewards)} answers, each with its reward sent to /feedback")
    time.sleep(1.0)  # the last records reach the monitor
    result = _readout_since(base_url, admin_token, time.time())
    print_readout(result)
    _admin(base_url, admin_token, "POST", f"/admin/experiments/{ENDPOINT}/stop")
    print(f"  readout: {base_url}/admin/experiments/{ENDPOINT} (admin token)")
    return result


def _readout_since(base_url: str, admin_token: str | None, since: float) -> dict:
    """The first readout computed at ``since`` or later: a read answers the newest one at once,
    and a newer one is computed every monitor interval."""
    deadline = time.monotonic() + 120
    while True:
        result = _admin(base_url, admin_token, "GET", f"/admin/experiments/{ENDPOINT}")
        if result["computed_at"] >= since:
            return result
        if time.monotonic() > deadline:
            print(
                f"  (no newer readout yet: this one is {since - result['computed_at']:.0f} s old)"
            )
            return result
        time.sleep(0.5)


def print_readout(result: dict) -> None:
    """The scorecard: units per arm, the sample-ratio check, then per metric the means, the
    relative lift with its always-valid 95% interval, the corrected p-value and the outcome."""
    ratio = result["sample_ratio"]
    print(
        f"  units {ratio['units']}; sample ratio "
        f"{'MISMATCH' if ratio['flagged'] else 'ok'} (p = {ratio['p_value']:.3g})"
    )
    control = result["design"]["control"]
    for arm in result["arms"]:
        for item in arm["metrics"]:
            means = result["metrics"].get(item["metric"], {})
            shown = [_number(means.get(a, {}).get("mean")) for a in (control, arm["arm"])]
            lift = item["lift"]
            if lift is None:
                interval = "not enough units yet"
            else:
                low, high = lift["always_valid_interval_relative"]
                interval = (
                    f"lift {_percent(lift['relative'])} [{_percent(low)}, {_percent(high)}]  "
                    f"p(BH) {_number(item['p_value_adjusted'])}"
                )
            print(
                f"  {item['metric']:11} {item['role']:9} {control} {shown[0]:>8}  "
                f"{arm['arm']} {shown[1]:>8}  {interval}  {item['outcome']}"
            )
        power = arm["power"]
        if power["minimum_detectable_effect"] is not None:
            print(
                f"  detectable now: {_percent(power['minimum_detectable_effect'])} relative on "
                f"the primary metric; units for the planned effect: {power['units_needed']}"
            )
    print(f"  verdict: {result['verdict'].upper()} - {result['reason']}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"
