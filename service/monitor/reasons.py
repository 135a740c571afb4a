"""The rollout's attribution comparison: the candidate's reasons against stable's in the step.

Each verdict explains a seeded sample of ``rows`` of each arm's first units in the step (one row
per unit, pinned requests left out unless the policy counts them, both arms over the same span:
service/monitor/step_units.py), with the model that answered each, and compares the two samples'
profiles with a permutation test (monitors/attribution.py ``profile_distance``). The test takes
the rows as independent draws of one population, which units assigned at random in the same span
are. The monitor's own distance, on its dashboards, samples each variant's newest rows instead:
a tester's pinned requests, answers from before the step and one user's batch of hundreds of
rows all count there, and a healthy candidate judged on it was rolled back.

Explaining is most of an analysis run's CPU, so verdicts are made in the monitor's analysis
thread (at its lower priority), at most every ``interval_s`` per step and only when the step's
units grew; the rollout reads the latest one of its step, and spends its budget per new verdict
(traffic/rollout.py ``verdicts_read``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from monitors.attribution import profile_distance
from monitors.store import FirstRow, MonitorStore
from service.monitor.step_units import step_units
from traffic.rollout import RolloutState
from traffic.rollout_checks import Divergence
from traffic.rollout_policy import RolloutPolicy

log = logging.getLogger("gateway.rollout")

Explain = Callable[[str, np.ndarray, list], np.ndarray]
"""(model tag, feature rows, the answers they got) -> each row's absolute attributions."""


@dataclass(frozen=True)
class _Verdict:
    step: tuple[float, str]
    """The step it is of (``_step_of``)."""
    at: float
    units: tuple[int, int]
    """How many of each arm's first units it was drawn from (stable's, the candidate's)."""
    divergence: Divergence


class StepReasons:
    """Verdicts on how far the candidate's reasons are from stable's, per endpoint."""

    def __init__(
        self,
        store: MonitorStore,
        explain: Explain,
        rows: int,
        min_rows: int,
        interval_s: float,
    ) -> None:
        self.store = store
        self.explain = explain
        self.rows = rows
        """Units explained per arm and verdict (``monitor.attribution_rows``)."""
        self.needed = min(rows, min_rows)
        """Units with finite inputs each arm needs for a verdict (as the monitor's own)."""
        self.interval_s = interval_s
        self._latest: dict[str, _Verdict] = {}

    def compare(self, policy: RolloutPolicy, state: RolloutState, now: float) -> None:
        """A new verdict for the endpoint's step, when its policy compares reasons, its
        candidate takes traffic, ``interval_s`` passed since the step's last one and the step's
        units grew since."""
        asked = policy.compares("attribution_divergence")
        if not asked or state.phase != "progressing" or policy.steps[state.step].shadow:
            return
        step = _step_of(state)
        last = self._latest.get(policy.endpoint)
        if last is not None and last.step == step and now - last.at < self.interval_s:
            return
        arms = (state.stable, state.candidate)
        found = step_units(self.store, policy, state, inputs=True)
        units = (len(found[state.stable]), len(found[state.candidate]))
        if last is not None and last.step == step and last.units == units:
            return  # the same units: the same verdict
        rng = np.random.default_rng(0)
        stable, candidate = (self._explained(found[arm], rng) for arm in arms)
        if stable is None or candidate is None:
            return  # too few units yet: tried again at the next run, nothing explained
        apart = profile_distance(candidate, stable)
        divergence = Divergence(apart.distance, 0.0, apart.p_value)
        self._latest[policy.endpoint] = _Verdict(step, now, units, divergence)
        log.info("rollout %s: reasons compared on %s units: %s", policy.endpoint, units, divergence)

    def latest(self, policy: RolloutPolicy, state: RolloutState) -> Divergence | None:
        """The newest verdict of the rollout's current step (None before its first)."""
        last = self._latest.get(policy.endpoint)
        if last is None or last.step != _step_of(state):
            return None
        return last.divergence

    def _explained(self, units: Sequence[FirstRow], rng: np.random.Generator) -> np.ndarray | None:
        """The absolute attributions of a seeded sample of ``rows`` of the units whose inputs
        are all finite (a row the model answers NaN for has NaN attributions), each explained by
        the model that answered it; None with fewer than ``needed``."""
        finite = [u for u in units if all(v is not None for v in u.inputs or ())]
        if len(finite) < self.needed:
            return None
        chosen = sorted(rng.choice(len(finite), min(self.rows, len(finite)), replace=False))
        sample = [finite[i] for i in chosen]
        explained = np.empty((len(sample), len(sample[0].inputs)))
        for model in {u.model for u in sample}:
            at = [i for i, u in enumerate(sample) if u.model == model]
            features = np.array([sample[i].inputs for i in at], dtype=float)
            explained[at] = self.explain(model, features, [sample[i].prediction for i in at])
        return explained


def _step_of(state: RolloutState) -> tuple[float, str]:
    """What names a verdict's step: when it began, and the candidate's model then."""
    return state.stage_started, state.candidate_model
