"""What a rollout's distance comparisons read of its step: each arm's first units in it.

A unit (a routing key, or a request without one) counts once, by its first answer in the step,
pinned requests left out unless the policy counts them, as the rate comparisons count (monitors/
store.py ``first_rows``). Both arms are read over the same span, until the first has
``STEP_ROWS``, the larger arm's units at the smaller one's rate (``rollout.even_shares``: 5/95 of
stable's at a 5% step), so that both fill alike: at a 5% step stable's first units fill twenty
times as fast, and read alone they were set against the candidate's from hours later, when the
mix of inputs may have moved for both; cut at stable's first 10,000, a 1% step's candidate had a
hundred, too few for a verdict. The sets grow until the first is full, and the verdicts on them
stop changing (and spending the comparison's budget) then. The monitor's own distances, on its
dashboards, are of each variant's newest rows instead: pinned requests among them.
"""

from __future__ import annotations

from monitors.store import FirstRow, MonitorStore
from traffic.rollout import RolloutState, even_shares
from traffic.rollout_policy import RolloutPolicy

STEP_ROWS = 10_000
"""The most first units of each arm a step's comparisons read."""


def step_units(
    store: MonitorStore, policy: RolloutPolicy, state: RolloutState, inputs: bool = False
) -> dict[str, list[FirstRow]]:
    """Each arm's first units in the rollout's current step (``inputs``: with their input rows,
    the units whose inputs the gateway did not keep left out)."""
    return store.first_rows(
        policy.endpoint,
        (state.stable, state.candidate),
        state.stage_started,
        STEP_ROWS,
        policy.count_pinned,
        policy.counts_requests,
        inputs=inputs,
        shares=even_shares(policy, state),
    )
