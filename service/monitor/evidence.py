"""Gathers a rollout's evidence from the monitor's store and its latest analysis run.

The controller (traffic/rollout.py) sees plain counts over the windows it names
(``rollout.windows``): the current stage and the current guardrail epoch. Each unit (a routing
key, or a request without one) counts once, by its first request in the window
(monitors/store.py ``_first_of_each_unit``): routing is sticky, so a user's requests are not
independent draws, and one heavy or unusual user would otherwise weigh as much as thousands.
Per window and arm: units, failures, invalid outputs, answers slower than ``slow_ms``, labeled
units and the right ones (a regressor's: within ``within`` of the label); for the candidate,
answers slower than the latency_ratio guardrail's threshold (``max`` times an upper confidence
bound for stable's quantile in the same window, from every one of stable's answers in it, which
only grow as the window does (the bound's validity at every look needs that) and span the time the
candidate's answers do; traffic/rollout_checks.py ``latency_threshold_rank``) and than the
p99_latency_ms guardrail's limit; and stable's counts in the ``PRIOR_WINDOW_S`` before the window,
which inform the prior over its rates. Also how far the candidate's predictions are from
stable's in the step (each arm's first units, their first rows: service/monitor/step_units.py),
the latest verdict on how far its reasons are (service/monitor/reasons.py, on the same units),
how far the candidate's inputs in those units drifted from its reference, and in a shadow step
the units the candidate mirrored and agreed on. Pinned requests are not evidence unless the
policy says ``count_pinned``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from monitors.drift import DriftSettings, predictions_apart
from monitors.shadow import agreeing
from monitors.store import MonitorStore
from service.monitor.reasons import StepReasons
from service.monitor.step_units import step_units
from traffic import rollout
from traffic.rollout import RolloutState
from traffic.rollout_checks import (
    PRIOR_WINDOW_S,
    ArmCounts,
    Divergence,
    Evidence,
    Window,
    guardrail_alphas,
    latency_threshold,
)
from traffic.rollout_policy import RolloutPolicy

InputDrift = Callable[[str, np.ndarray, list], float | None]
"""(model tag, input rows, the answers they got) -> the share of the model's features whose
values drifted from its reference (None: too few rows for a verdict)."""


class EvidenceGatherer:
    def __init__(
        self,
        store: MonitorStore,
        settings: DriftSettings,
        reasons: StepReasons | None = None,
        input_drift: InputDrift | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        """The monitor's drift threshold and the rows a verdict needs."""
        self.reasons = reasons
        """The verdicts on the candidate's reasons in its step (None: attribution is off)."""
        self.input_drift = input_drift
        """How far a sample of a model's inputs drifted from its reference (None: not judged)."""

    def arm(
        self,
        policy: RolloutPolicy,
        variant: str,
        since: float,
        until: float | None = None,
        above_s: float | None = None,
        within: float | None = None,
        prior: bool = False,
    ) -> ArmCounts:
        """One variant's counts in [since, until); ``above_s``: the latency threshold its
        ``above`` counts (seconds); ``within``: a regressor's answer this close to its label is
        right (None: a class, right when it is the label); ``prior``: counts that only inform a
        prior, every request counted (cheaper; no test's validity rests on them)."""
        limit = next((g.max for g in policy.guardrails if g.metric == "p99_latency_ms"), None)
        thresholds = (policy.slow_ms / 1000, above_s, None if limit is None else limit / 1000)
        pinned, by_request = policy.count_pinned, prior or policy.counts_requests
        requests, errors, invalid, slow, above, over_limit = self.store.outcomes(
            policy.endpoint, variant, since, until, thresholds, pinned, by_request
        )
        labeled, correct = self.store.labeled_counts(
            policy.endpoint, variant, since, until, pinned, within, by_request
        )
        return ArmCounts(requests, errors, slow, invalid, labeled, correct, above, over_limit)

    def window(
        self,
        policy: RolloutPolicy,
        state: RolloutState,
        since: float,
        alpha: float,
        within: float | None = None,
    ) -> Window:
        """Both arms since ``since``, and stable's counts just before it; ``alpha``: each
        guardrail's in this window; ``within`` as in ``arm``."""
        stable = self.arm(policy, state.stable, since, within=within)
        answered = stable.answered
        p99_rank = math.ceil(0.99 * answered)
        slowest: dict[int, float] = {}

        def kth_fastest(k: int) -> float:
            """Stable's k-th fastest answer in the window, read as the (answered - k + 1)-th
            slowest (``MonitorStore.slowest_latencies`` says why), with its p99 in the same
            read: one sort of the window's answers, not two."""
            ranks = (answered - k + 1, answered - p99_rank + 1)
            if ranks[0] not in slowest:
                slowest.update(
                    self.store.slowest_latencies(
                        policy.endpoint,
                        state.stable,
                        since,
                        ranks,
                        policy.count_pinned,
                        policy.counts_requests,
                    )
                )
            return slowest[ranks[0]]

        threshold_s = latency_threshold(policy, answered, kth_fastest, alpha)
        p99_s = kth_fastest(p99_rank) if answered else None
        return Window(
            candidate=self.arm(policy, state.candidate, since, above_s=threshold_s, within=within),
            stable=replace(stable, p99_ms=None if p99_s is None else p99_s * 1000),
            stable_before=self.arm(
                policy, state.stable, since - PRIOR_WINDOW_S, since, within=within, prior=True
            ),
            threshold_ms=None if threshold_s is None else threshold_s * 1000,
        )

    def gather(
        self, policy: RolloutPolicy, state: RolloutState, now: float, within: float | None = None
    ) -> Evidence:
        """``within``: the endpoint's models are regressors, and an answer this close to its label
        is right, and a shadow's answer this close to stable's agrees; None for classifiers."""
        windows = rollout.windows(policy, state, now)
        stage_alpha, epoch_alpha = guardrail_alphas(policy, windows)
        reasons = None if self.reasons is None else self.reasons.latest(policy, state)
        return Evidence(
            stage=self.window(policy, state, windows.stage_start, stage_alpha, within),
            epoch=self.window(policy, state, windows.epoch_start, epoch_alpha, within),
            divergence=self._divergence(policy, state, within is None),
            drifted_share=self._drifted_share(policy, state),
            attribution_divergence=reasons,
            shadow=self._shadow(policy, state, windows.stage_start, within),
            accurate_within=within,
        )

    def _divergence(
        self, policy: RolloutPolicy, state: RolloutState, categorical: bool
    ) -> Divergence | None:
        """The candidate's predictions against stable's in the step (None: no comparison asks,
        no traffic step, or too few answers yet for a verdict)."""
        if not policy.compares("prediction_divergence") or not _traffic_step(policy, state):
            return None
        rows = step_units(self.store, policy, state)
        stable, candidate = (
            pd.Series([row.prediction for row in rows[variant]], name="prediction")
            for variant in (state.stable, state.candidate)
        )
        apart = predictions_apart(stable, candidate, categorical, self.settings)
        if apart is None:
            return None
        found, p_value = apart
        return Divergence(found.score, found.threshold, p_value)

    def _drifted_share(self, policy: RolloutPolicy, state: RolloutState) -> float | None:
        """The share of the candidate's features whose inputs in the step drifted from its
        reference (its first units, unpinned, as the other comparisons read the step; None: no
        comparison asks, no traffic step, too few units yet). The monitor's own verdict (its
        dashboards') reads each variant's newest rows, where a tester's pinned requests with
        unusual inputs drifted a candidate's traffic by themselves."""
        asked = policy.compares("input_drift") and self.input_drift is not None
        if not asked or not _traffic_step(policy, state):
            return None
        units = step_units(self.store, policy, state, inputs=True)[state.candidate]
        if not units:
            return None
        features = np.array([u.inputs for u in units], dtype=float)
        return self.input_drift(state.candidate_model, features, [u.prediction for u in units])

    def _shadow(
        self, policy: RolloutPolicy, state: RolloutState, since: float, within: float | None
    ) -> tuple[int, int] | None:
        """(units the candidate mirrored in a shadow step, those it agreed on); a regressor's
        answer agrees ``within`` stable's."""
        if not state.at_a_step or not policy.steps[state.step].shadow:
            return None
        ours, theirs = self.store.mirrored(
            policy.endpoint,
            state.stable,
            state.candidate,
            since,
            policy.count_pinned,
            policy.counts_requests,
        )
        if not ours:
            return None
        regression = within is not None
        agree = agreeing(np.array(ours), np.array(theirs), regression, within)
        return len(ours), int(agree.sum())


def _traffic_step(policy: RolloutPolicy, state: RolloutState) -> bool:
    """Whether the rollout is at a step where the candidate takes traffic (not a shadow's)."""
    return state.at_a_step and not policy.steps[state.step].shadow
