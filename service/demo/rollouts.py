"""The demo's two rollouts, watched live: a good candidate promoted step by step, and one that turns
slow, rolled back by its latency guardrail. Progress comes from the monitor, which decides them,
through the gateway's admin API."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from service.demo.traffic import drive

DEMO_POLICY = {
    "candidate": "candidate",
    "steps": [{"weight": 10, "min_duration_s": 4}, {"weight": 50, "min_duration_s": 4}],
    "interval_s": 1.0,
    "guard_window_s": 10,
    "revert_window_s": 4,
    "comparisons": [
        {"metric": "error_rate", "margin": 0.02, "min_samples": 100},
        {"metric": "slow_rate", "margin": 0.1, "min_samples": 100},
        {"metric": "accuracy", "margin": 0.05, "min_samples": 100},
    ],
}
ROLLOUTS = {
    "cancer-canary": "a good candidate (cancer:v2, the MLP)",
    "cancer-slow": "a candidate that turns slow (cancer:v2 behind a 40 ms delay)",
}


ROUND_REQUESTS = 300
"""Requests per round of traffic, each round from users not seen before: a rollout counts a
user once per step (its checks judge users, not requests), as a real endpoint sees new ones."""


def _new_users() -> Iterator[range]:
    for first in itertools.count(0, ROUND_REQUESTS * 100):
        yield range(first, first + ROUND_REQUESTS * 100)


def rollout_endpoints() -> dict:
    """The demo config's endpoints for the two rollouts."""
    endpoints = {}
    for name in ROLLOUTS:
        candidate = {"name": "candidate", "model": "cancer:v2", "role": "candidate", "weight": 0}
        if name == "cancer-slow":
            candidate["faults"] = {"delay_ms": 40}
        endpoints[name] = {
            "routing": {"key": {"header": "x-user-id"}},
            "variants": [{"name": "stable", "model": "cancer:v1"}, candidate],
            "rollout": DEMO_POLICY,
        }
    return endpoints


def _history(base_url: str, endpoint: str, admin_token: str | None) -> dict:
    request = urllib.request.Request(
        f"{base_url}/admin/rollouts/{endpoint}?history=10000",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def watch_rollouts(
    base_url: str, models_dir: Path, admin_token: str | None, max_s: float = 120
) -> None:
    """Drive traffic through each rollout endpoint and print every transition until it ends."""
    rows = pd.read_csv(models_dir / "cancer-reference.csv")
    for endpoint, what in ROLLOUTS.items():
        print(f"rollout on {endpoint}: {what}")
        shown, started, ended, users = 0, time.monotonic(), False, _new_users()
        while time.monotonic() - started < max_s:
            if not ended:
                asyncio.run(drive(base_url, rows, ROUND_REQUESTS, endpoint, next(users)))
            described = _history(base_url, endpoint, admin_token)
            for entry in described["history"][shown:]:
                if entry["action"] != "hold":
                    print(
                        f"  [{time.monotonic() - started:5.1f} s] {entry['action']:14} {entry['reason']}"
                    )
            shown = len(described["history"])
            state = described["state"]
            if ended:
                break
            if state and state["phase"] in ("succeeded", "rolled_back"):
                ended = True  # the last transition's audit entry follows its state: read again
                time.sleep(0.5)
        else:
            print(f"  still {state['phase'] if state else 'not started'} after {max_s:.0f} s")
    print(f"rollout history: {base_url}/admin/rollouts/<endpoint> (admin token)")
