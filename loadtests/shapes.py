"""Load shapes for loadtests/locustfile.py, picked with ``GATEWAY_SHAPE``:

- ``step``: users in steps (``GATEWAY_STEP_USERS`` more every ``GATEWAY_STEP_SECONDS``, up to
  ``GATEWAY_STEPS`` steps), to find where latency bends;
- ``drift``: a constant ``GATEWAY_USERS`` for ``GATEWAY_SHAPE_SECONDS``; after the first half the
  users' inputs drift (two features scaled by 1.5), so drift shows in the monitor's metrics.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

import loadtests.drift as drift


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class StepLoadShape(LoadTestShape):
    def tick(self):
        step_s, users = _env("GATEWAY_STEP_SECONDS", 30), _env("GATEWAY_STEP_USERS", 10)
        step = int(self.get_run_time() // step_s)
        if step >= _env("GATEWAY_STEPS", 5):
            return None
        return int(users * (step + 1)), max(1.0, users)


class DriftShape(LoadTestShape):
    def tick(self):
        seconds, users = _env("GATEWAY_SHAPE_SECONDS", 120), int(_env("GATEWAY_USERS", 20))
        run_time = self.get_run_time()
        if run_time >= seconds:
            return None
        drift.drifting = run_time >= seconds / 2
        return users, max(1.0, users / 2)
