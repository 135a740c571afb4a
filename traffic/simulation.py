"""A rollout simulator: the controller fed with synthetic evidence, no server.

Each arm is a model of how a variant behaves (error rate, latency, accuracy, ...); every tick draws
that tick's requests, splits them by the weights the controller last set, and hands the controller
the same counts the service layer would gather from the monitor. Used by the tests (A/A false
rollbacks, bad candidates caught) and by bench/rollout.py; also a way to try a policy before
using it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from traffic.rollout import Decision, RolloutState, evaluate, start
from traffic.rollout_checks import ArmCounts, Evidence
from traffic.rollout_policy import RolloutPolicy


@dataclass(frozen=True)
class ArmModel:
    error_rate: float = 0.01
    invalid_rate: float = 0.0
    median_latency_ms: float = 20.0
    accuracy: float = 0.9
    agreement: float = 0.97
    """Share of rows where this arm (as a shadow) agrees with stable."""
    divergence: float = 0.02
    """Distance of its predictions from stable's (the monitor's figure)."""


@dataclass
class SimulationResult:
    phase: str
    decisions: list[tuple[float, Decision]] = field(default_factory=list)

    @property
    def ended_at(self) -> float | None:
        """Seconds from the start to the first rollback or promotion, if any."""
        for at, decision in self.decisions:
            if decision.action in ("rollback", "promote"):
                return at
        return None


@dataclass
class _Window:
    """Per-arm draws of the recent ticks, for the guard window."""

    ticks: deque = field(default_factory=deque)

    def add(self, counts: ArmCounts, latencies: np.ndarray, keep: int) -> None:
        self.ticks.append((counts, latencies))
        while len(self.ticks) > keep:
            self.ticks.popleft()

    def counts(self) -> ArmCounts:
        total = _sum([c for c, _ in self.ticks])
        latencies = np.concatenate([x for _, x in self.ticks]) if self.ticks else np.array([])
        p99 = float(np.quantile(latencies, 0.99)) if len(latencies) else None
        return ArmCounts(**{**total.__dict__, "p99_ms": p99})


def _sum(counts: list[ArmCounts]) -> ArmCounts:
    names = ("requests", "errors", "slow", "invalid", "labeled", "correct")
    return ArmCounts(**{n: sum(getattr(c, n) for c in counts) for n in names})


def _draw(rng, arm: ArmModel, n: int, label_share: float, slow_ms: float):
    errors = rng.binomial(n, arm.error_rate)
    answered = n - errors
    latencies = rng.lognormal(np.log(arm.median_latency_ms), 0.5, size=n)
    labeled = rng.binomial(answered, label_share)
    counts = ArmCounts(
        requests=n,
        errors=int(errors),
        slow=int((latencies > slow_ms).sum()),
        invalid=int(rng.binomial(answered, arm.invalid_rate)),
        labeled=int(labeled),
        correct=int(rng.binomial(labeled, arm.accuracy)),
    )
    return counts, latencies


def simulate(
    policy: RolloutPolicy,
    stable: ArmModel,
    candidate: ArmModel,
    requests_per_s: float,
    label_share: float = 0.0,
    max_s: float = 3600.0,
    seed: int = 0,
) -> SimulationResult:
    """Run one rollout tick by tick until it ends or ``max_s`` passes."""
    rng = np.random.default_rng(seed)
    decision = start(policy, "candidate:v1", 0.0)
    state: RolloutState = decision.state
    result = SimulationResult(state.phase, [(0.0, decision)])
    weights = decision.targets
    totals = {"candidate": ArmCounts(), "stable": ArmCounts()}
    windows = {"candidate": _Window(), "stable": _Window()}
    keep = max(1, round(policy.guard_window_s / policy.interval_s))
    shadow_rows = shadow_agree = 0
    now = 0.0
    while now < max_s and state.phase not in ("succeeded", "rolled_back"):
        now += policy.interval_s
        n = int(rng.poisson(requests_per_s * policy.interval_s))
        target = weights[policy.candidate]
        n_candidate = int(rng.binomial(n, target.weight / 100)) if target.role != "shadow" else 0
        if target.role == "shadow":
            shadow_rows += n
            shadow_agree += int(rng.binomial(n, candidate.agreement))
        for name, arm, count in (
            ("candidate", candidate, n_candidate),
            ("stable", stable, n - n_candidate),
        ):
            counts, latencies = _draw(rng, arm, count, label_share, policy.slow_ms)
            totals[name] = _sum([totals[name], counts])
            windows[name].add(counts, latencies, keep)
        evidence = Evidence(
            candidate=totals["candidate"],
            stable=totals["stable"],
            recent_candidate=windows["candidate"].counts(),
            recent_stable=windows["stable"].counts(),
            divergence=(candidate.divergence, 0.1) if n_candidate else None,
            drifted_share=0.0,
            shadow=(shadow_rows, shadow_agree) if shadow_rows else None,
        )
        decision = evaluate(policy, state, evidence, now)
        state = decision.state
        result.decisions.append((now, decision))
        if decision.targets is not None:
            weights = decision.targets
    result.phase = state.phase
    return result
