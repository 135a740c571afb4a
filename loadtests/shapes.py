"""Load shapes for loadtests/locustfile.py, picked with ``GATEWAY_SHAPE`` (schedules in
loadtests/schedule.py):

- ``step``: users in steps (``GATEWAY_STEP_USERS`` more every ``GATEWAY_STEP_SECONDS``, up to
  ``GATEWAY_STEPS`` steps), to find where latency bends;
- ``drift``: a constant ``GATEWAY_USERS`` for ``GATEWAY_SHAPE_SECONDS``; after the first half the
  users' inputs drift (two features scaled by 1.5), so drift shows in the monitor's metrics.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

import loadtests.drift as drift
from loadtests.schedule import drifting_load, step_load


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class StepLoadShape(LoadTestShape):
    def tick(self):
        return step_load(
            self.get_run_time(),
            _env("GATEWAY_STEP_SECONDS", 30),
            _env("GATEWAY_STEP_USERS", 10),
            _env("GATEWAY_STEPS", 5),
        )


class DriftShape(LoadTestShape):
    def tick(self):
        users, drift.drifting = drifting_load(
            self.get_run_time(), _env("GATEWAY_SHAPE_SECONDS", 120), int(_env("GATEWAY_USERS", 20))
        )
        return users
