"""What a rollout is told to do: its steps, guardrails and comparisons (pure values).

The service layer builds a ``RolloutPolicy`` from gateway.yaml (validated there); the controller
(traffic/rollout.py) only reads it. ``policy_hash`` names the exact policy every audit entry was
decided under.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

GuardMetric = Literal["error_rate", "invalid_rate", "p99_latency_ms", "p99_latency_ratio"]
CompareMetric = Literal[
    "error_rate",
    "slow_rate",
    "accuracy",
    "prediction_divergence",
    "input_drift",
    "shadow_agreement",
]
Action = Literal["pause", "rollback"]


@dataclass(frozen=True)
class Step:
    """Hold the candidate at ``weight`` percent until every required check has passed for
    ``min_duration_s``. ``shadow``: weight 0, the candidate mirrors every request instead.
    ``gate``: once passed, wait for an operator's approval before the next step."""

    weight: float
    min_duration_s: float
    shadow: bool = False
    gate: bool = False


@dataclass(frozen=True)
class Guardrail:
    """An absolute limit on the candidate over the guard window, needing few samples: a breach in
    ``breaches`` of the last ``of_last`` evaluations with at least ``min_count`` requests rolls
    back at once. ``p99_latency_ratio`` is the candidate's p99 over the stable variant's."""

    metric: GuardMetric
    max: float
    min_count: int = 20
    breaches: int = 1
    of_last: int = 1


@dataclass(frozen=True)
class Comparison:
    """Candidate against stable in the same window. Rates (error_rate, slow_rate, 1 - accuracy)
    use an always-valid interval on the difference: FAIL when it lies wholly above ``margin``
    (worse by more than allowed), PASS when wholly below it, else INSUFFICIENT. Distances
    (prediction_divergence, input_drift) PASS under ``margin`` and FAIL over it once the monitor
    has a verdict; shadow_agreement must stay above 1 - ``margin``."""

    metric: CompareMetric
    margin: float
    min_samples: int = 100
    required: bool = True


@dataclass(frozen=True)
class RolloutPolicy:
    endpoint: str
    candidate: str
    stable: str
    steps: tuple[Step, ...]
    guardrails: tuple[Guardrail, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    interval_s: float = 10.0
    guard_window_s: float = 60.0
    alpha: float = 0.05
    """False-rollback budget for all comparisons together (Bonferroni across them)."""
    slow_ms: float = 100.0
    """A request slower than this counts as slow (slow_rate)."""
    max_insufficient_s: float = 600.0
    on_insufficient: Action = "pause"
    timeout_s: float = 3600.0
    on_timeout: Action = "rollback"
    revert_window_s: float = 300.0
    dry_run: bool = False
    """Decide and log as usual, change no traffic (the audit shows what would have happened)."""
    dry_run_checks: tuple[str, ...] = field(default=())
    """Checks evaluated and logged but never acted on (by name, e.g. "accuracy")."""
    count_pinned: bool = False
    """Judge pinned requests too; by default they are not evidence (a caller chose the variant,
    so they are not a random share of the traffic, and a caller could steer the verdict)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def policy_hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
