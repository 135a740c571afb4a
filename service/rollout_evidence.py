"""Gathers a rollout's evidence from the monitor's store and its latest analysis run.

The controller (traffic/rollout.py) sees plain counts: per variant since the analysis started (for
the comparisons, both arms over the same time) and over the recent guard window (for the
guardrails, with p99 latency), the labeled rows and how many were right, the monitor's distance
between the candidate's predictions and stable's, and in a shadow step the rows the candidate
mirrored and agreed on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from monitors.shadow import agreeing
from monitors.store import MonitorStore
from traffic.rollout import RolloutState
from traffic.rollout_checks import ArmCounts, Evidence
from traffic.rollout_policy import RolloutPolicy

Reports = Callable[[], Mapping[tuple[str, str], object]]


class EvidenceGatherer:
    def __init__(self, store: MonitorStore, latest_reports: Reports) -> None:
        self.store = store
        self.latest_reports = latest_reports
        """(endpoint, variant) -> the monitor's latest ``VariantReport``."""

    def arm(
        self,
        endpoint: str,
        variant: str,
        since: float,
        slow_s: float,
        recent: bool,
        pinned: bool = False,
    ) -> ArmCounts:
        """One variant's counts since ``since``; ``pinned``: pinned requests count too."""
        store = self.store
        requests, failed, slow, invalid = store.outcomes(endpoint, variant, since, slow_s, pinned)
        if recent:  # guardrails: latency percentile, no labels (they come late)
            latencies = store.latencies(endpoint, variant, since, pinned)
            p99 = float(np.quantile(latencies, 0.99)) * 1000 if latencies else None
            return ArmCounts(requests, failed, slow, invalid, p99_ms=p99)
        labeled, correct = store.labeled_counts(endpoint, variant, since, pinned)
        return ArmCounts(requests, failed, slow, invalid, labeled, correct)

    def gather(
        self, policy: RolloutPolicy, state: RolloutState, now: float, regression: bool
    ) -> Evidence:
        """``regression``: the candidate is a regressor (shadow agreement within 1e-6 relative)."""
        endpoint, slow_s = policy.endpoint, policy.slow_ms / 1000
        since = state.analysis_started
        recent = max(since, now - policy.guard_window_s)
        report = self.latest_reports().get((endpoint, state.candidate))
        divergence = drifted = None
        if report is not None and report.drift.status == "ok":
            drifted = report.drift.drifted_share
        if report is not None and report.vs_stable is not None:
            divergence = (report.vs_stable.score, report.vs_stable.threshold)
        pinned = policy.count_pinned
        return Evidence(
            candidate=self.arm(endpoint, state.candidate, since, slow_s, False, pinned),
            stable=self.arm(endpoint, state.stable, since, slow_s, False, pinned),
            recent_candidate=self.arm(endpoint, state.candidate, recent, slow_s, True, pinned),
            recent_stable=self.arm(endpoint, state.stable, recent, slow_s, True, pinned),
            divergence=divergence,
            drifted_share=drifted,
            shadow=self._shadow(policy, state, since, regression),
        )

    def _shadow(
        self, policy: RolloutPolicy, state: RolloutState, since: float, regression: bool
    ) -> tuple[int, int] | None:
        if state.phase == "promoted" or not policy.steps[state.step].shadow:
            return None
        rows = self.store.shadowed(policy.endpoint, state.stable, since)
        rows = rows[rows["shadow"] == state.candidate]
        if rows.empty:
            return None
        theirs, ours = rows["shadow_prediction"].to_numpy(), rows["prediction"].to_numpy()
        return len(rows), int(agreeing(ours, theirs, regression).sum())
