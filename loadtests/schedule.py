"""The load shapes' schedules as plain functions (no Locust import, so tests can call them):
each returns (users, spawn rate) for a run time, or None when the run is over."""

from __future__ import annotations


def step_load(
    run_time: float, step_s: float, users: float, steps: float
) -> tuple[int, float] | None:
    """``users`` more every ``step_s`` seconds, for ``steps`` steps."""
    step = int(run_time // step_s)
    if step >= steps:
        return None
    return int(users * (step + 1)), max(1.0, users)


def drifting_load(
    run_time: float, seconds: float, users: int
) -> tuple[tuple[int, float] | None, bool]:
    """A constant ``users`` for ``seconds``; the second value says whether inputs drift now
    (after the first half)."""
    if run_time >= seconds:
        return None, True
    return (users, max(1.0, users / 2)), run_time >= seconds / 2
