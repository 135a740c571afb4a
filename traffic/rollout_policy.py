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

GuardMetric = Literal[
    "error_rate", "error_increase", "invalid_rate", "latency_ratio", "p99_latency_ms"
]
CompareMetric = Literal[
    "error_rate",
    "slow_rate",
    "accuracy",
    "prediction_divergence",
    "input_drift",
    "attribution_divergence",
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
    """A limit on the candidate that rolls back at once when it is broken with confidence: each
    guardrail is a one-sided always-valid test spending its share of ``guardrail_alpha``
    (traffic/rollout_checks.py says how), so it keeps that budget however long the rollout runs
    or waits.

    - ``error_rate``: the candidate's failed share is above ``max``;
    - ``error_increase``: it is above stable's in the same window by more than ``max`` (a shared
      outage fails both arms and is not the candidate's fault);
    - ``invalid_rate``: its share of answers with NaN or infinite outputs is above ``max``;
    - ``latency_ratio``: its ``quantile`` latency is above ``max`` times stable's in the same
      window, judged as the share of its requests slower than that (above 1 - ``quantile``),
      which needs no sample p99 and holds for any tail shape;
    - ``p99_latency_ms``: its p99 is above ``max`` ms (more than 1% of its requests slower).

    ``min_count`` candidate samples (users, or requests: ``RolloutPolicy.unit``) are needed for
    a verdict; ``breaches`` of the last ``of_last`` evaluations must reject (only ever more
    conservative)."""

    metric: GuardMetric
    max: float
    min_count: int = 1
    breaches: int = 1
    of_last: int = 1
    quantile: float = 0.5


@dataclass(frozen=True)
class Comparison:
    """Candidate against stable in the same window. Rates (error_rate, slow_rate, 1 - accuracy;
    a regressor's answer is accurate within the 95th percentile of its stable model's absolute
    errors on its reference) use an always-valid interval on the difference: FAIL when it lies
    wholly above ``margin`` (worse by more than allowed), PASS when wholly below it, else
    INSUFFICIENT. Distances
    (prediction_divergence, input_drift, attribution_divergence: how far the candidate's reasons,
    its features' shares of mean |SHAP|, are from stable's in the same window, 0 to 1) PASS under
    ``margin`` and FAIL over it once the monitor has a verdict, if the monitor's noise test
    rejects at the verdict's share of the comparison's budget (else INSUFFICIENT);
    shadow_agreement must stay above 1 - ``margin`` (a regressor's answer agrees within the
    tolerance its accuracy is judged with)."""

    metric: CompareMetric
    margin: float
    min_samples: int = 10
    required: bool = True


RATE_GUARDRAILS = ("error_rate", "error_increase", "invalid_rate")
"""Guardrails whose ``max`` is a rate (a share of requests), at most 1."""

DEFAULT_GUARDRAILS = (
    Guardrail("error_increase", 0.05),
    Guardrail("error_rate", 0.5),
    Guardrail("invalid_rate", 0.01),
    Guardrail("latency_ratio", 1.5, quantile=0.5),
)
"""Worse than stable by 5 error points; half of the requests failing whatever stable does (a
total failure, also after promotion when stable has no traffic left); any NaN output beyond 1%;
a median latency 1.5 times stable's."""
DEFAULT_COMPARISONS = (
    Comparison("error_rate", 0.01),
    Comparison("slow_rate", 0.05),
    Comparison("accuracy", 0.03),
    Comparison("prediction_divergence", 0.2),
)
"""A classifier's: the distance of its predicted classes' shares from stable's needs no label, and
models that do the job barely move it (a forest and boosting against a logistic regression:
0.00-0.03 on scikit-learn's cancer, iris and wine data)."""
REGRESSION_COMPARISONS = tuple(
    c for c in DEFAULT_COMPARISONS if c.metric != "prediction_divergence"
)
"""A regressor's: the distance of its values from stable's (Wasserstein, in units of stable's
spread) is not a fault but what retraining does. On scikit-learn's diabetes data a ridge
regression refitted on a bootstrap sample of the same rows is 0.22 from the original and a better
least-squares fit 0.73, so 0.2 rolled back healthy candidates; accuracy on labels judges it."""


def default_comparisons(regression: bool) -> tuple[Comparison, ...]:
    """The comparisons of a policy that names none, for an endpoint of regressors or not."""
    return REGRESSION_COMPARISONS if regression else DEFAULT_COMPARISONS


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
    """Length of a guardrail epoch: besides the data of the whole stage, each guardrail tests
    the data of its current epoch, so a candidate that breaks late is caught within about one."""
    alpha: float = 0.05
    """False-rollback budget of the whole rollout, every check and every look together."""
    guardrail_alpha: float = 0.01
    """The guardrails' share of ``alpha``; the comparisons spend the rest."""
    slow_ms: float = 100.0
    """A request slower than this counts as slow (slow_rate)."""
    max_insufficient_s: float = 600.0
    on_insufficient: Action = "pause"
    timeout_s: float = 3600.0
    on_timeout: Action = "pause"
    revert_window_s: float = 300.0
    dry_run: bool = False
    """Decide and log as usual, change no traffic (the audit shows what would have happened)."""
    dry_run_checks: tuple[str, ...] = field(default=())
    """Checks evaluated and logged but never acted on (by name, e.g. "accuracy")."""
    count_pinned: bool = False
    """Judge pinned requests too; by default they are not evidence (a caller chose the variant,
    so they are not a random share of the traffic, and a caller could steer the verdict)."""
    unit: Literal["key", "request"] = "key"
    """What the checks count: each routing key's first request in a window (key; a request
    without a key is its own unit), or every request. Routing is sticky, so one user's requests
    share an arm and, when users differ, move it together: counted as independent, they rolled
    back healthy candidates far beyond ``alpha``. ``request`` suits only requests that are alike
    whoever sends them; it reaches a verdict on less traffic."""

    def to_dict(self) -> dict:
        return asdict(self)

    def compares(self, metric: CompareMetric) -> bool:
        """Whether one of the policy's comparisons judges ``metric``."""
        return any(c.metric == metric for c in self.comparisons)

    @property
    def counts_requests(self) -> bool:
        """Whether every request is a sample (``unit: request``), not each key's first."""
        return self.unit == "request"

    @property
    def policy_hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
