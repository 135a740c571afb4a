"""A rollout simulator: the controller fed with synthetic evidence, no server.

Each arm is a model of how a variant behaves: its error rate, invalid outputs, a latency
distribution (a log-normal body, a slow mode as real services have it: a share of requests at
several times the median, from GC pauses, cold caches or queueing; or any generator you pass),
its accuracy on labels. The scenario adds traffic that may vary with time, bursts of errors or of
slowness that hit both arms at once (a shared dependency failing or slowing down), labels that arrive late, and operator pauses. Every
tick draws that tick's requests, splits them by the weights the controller last set, and hands the
controller the same counts the service layer gathers from the monitor, over the same windows
(traffic/rollout.py ``windows``). Used by the tests (A/A false rollbacks under realistic traffic,
bad candidates caught), by bench/rollout.py, and to try a policy before using it.

Latencies are kept as histograms on fine log-spaced bins (2.3% wide): thresholds are rounded up to
a bin edge and "slower than" counts whole bins above it, so the simulated checks are, if anything,
a little more conservative than the service's exact counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from traffic.rollout import Decision, RolloutState, act, evaluate, start, windows
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

EDGES = np.concatenate([[0.0], np.geomspace(0.01, 1e6, 801)[1:], [np.inf]])
"""Latency bins (ms): [0, 0.0102), ..., [~1e6, inf)."""
LatencyFn = Callable[[np.random.Generator, int], np.ndarray]
RateFn = Callable[[float], float]


@dataclass(frozen=True)
class ArmModel:
    error_rate: float = 0.01
    invalid_rate: float = 0.0
    median_latency_ms: float = 20.0
    latency_sigma: float = 0.5
    """Spread of the log-normal body of the latency distribution."""
    slow_share: float = 0.0
    """Share of requests in the slow mode..."""
    slow_factor: float = 8.0
    """...at this many times the median (same log-normal shape)."""
    latency: LatencyFn | None = None
    """Any latency generator (ms) instead of the two fields above: (rng, n) -> n latencies."""
    accuracy: float = 0.9
    agreement: float = 0.97
    """Share of rows where this arm (as a shadow) agrees with stable."""
    divergence: float = 0.02
    """Distance of its predictions from stable's (the monitor's figure)."""

    def slowed(self, factor: float) -> ArmModel:
        """The same arm with every latency ``factor`` times as long."""
        if factor == 1.0:
            return self
        if self.latency is None:
            return replace(self, median_latency_ms=self.median_latency_ms * factor)
        drawn = self.latency
        return replace(self, latency=lambda rng, n: factor * drawn(rng, n))

    def latency_histogram(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Counts of ``n`` answered requests' latencies per bin of ``EDGES``."""
        if self.latency is not None:
            return np.bincount(
                np.searchsorted(EDGES, self.latency(rng, n), side="right") - 1,
                minlength=len(EDGES) - 1,
            )[: len(EDGES) - 1]
        return rng.multinomial(n, self._bin_probabilities())

    def _bin_probabilities(self) -> np.ndarray:
        cached = _PROBABILITIES.get(self)
        if cached is None:
            from math import erf, log, sqrt

            def cdf(x: float, median: float) -> float:
                if x <= 0:
                    return 0.0
                if not np.isfinite(x):
                    return 1.0
                return 0.5 * (1 + erf((log(x) - log(median)) / (self.latency_sigma * sqrt(2))))

            body, slow = self.median_latency_ms, self.median_latency_ms * self.slow_factor
            mixed = [
                (1 - self.slow_share) * cdf(edge, body) + self.slow_share * cdf(edge, slow)
                for edge in EDGES
            ]
            cached = _PROBABILITIES[self] = np.clip(np.diff(mixed), 0, None)
            cached /= cached.sum()
        return cached


_PROBABILITIES: dict[ArmModel, np.ndarray] = {}


@dataclass(frozen=True)
class Bursts:
    """Trouble that hits every arm at once: every ``every_s`` seconds (on average, exponentially
    spaced), for ``length_s`` seconds, requests fail with ``error_rate`` and take
    ``latency_factor`` times as long (a shared dependency failing or slowing down, a peak)."""

    every_s: float
    length_s: float
    error_rate: float
    latency_factor: float = 1.0


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

    @property
    def evaluations_to_end(self) -> int | None:
        """Evaluations from the start to the first rollback or promotion, if any."""
        for i, (_, decision) in enumerate(self.decisions):
            if decision.action in ("rollback", "promote"):
                return i
        return None


@dataclass
class _Counts:
    """Running counts of one arm over one window (what ``ArmCounts`` is built from)."""

    requests: int = 0
    errors: int = 0
    invalid: int = 0
    labeled: int = 0
    correct: int = 0
    latency: np.ndarray = field(default_factory=lambda: np.zeros(len(EDGES) - 1, np.int64))

    def add(self, other: _Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.invalid += other.invalid
        self.labeled += other.labeled
        self.correct += other.correct
        self.latency += other.latency

    def arm(self, policy: RolloutPolicy, threshold_ms: float | None) -> ArmCounts:
        above_bins = np.cumsum(self.latency[::-1])[::-1]  # requests in bin i or above

        def slower(ms: float | None) -> int:
            if ms is None:
                return 0
            first = int(np.searchsorted(EDGES, ms, side="left"))  # first edge >= ms
            return int(above_bins[first]) if first < len(above_bins) else 0

        limit = next((g.max for g in policy.guardrails if g.metric == "p99_latency_ms"), None)
        return ArmCounts(
            requests=self.requests,
            errors=self.errors,
            slow=slower(policy.slow_ms),
            invalid=self.invalid,
            labeled=self.labeled,
            correct=self.correct,
            above=slower(threshold_ms),
            over_limit=slower(limit),
        )

    def ranked_ms(self, rank: int) -> float:
        """The ``rank``-th fastest answer's latency (1-based), rounded up to its bin's edge."""
        index = int(np.searchsorted(np.cumsum(self.latency), rank, side="left"))
        return float(EDGES[index + 1])


@dataclass
class _Arm:
    """What one arm has seen: its windows' running counts, its ticks of the last
    ``PRIOR_WINDOW_S``, and what they held when each window began (stable's prior)."""

    stage: _Counts = field(default_factory=_Counts)
    epoch: _Counts = field(default_factory=_Counts)
    recent: deque = field(default_factory=deque)
    stage_before: ArmCounts = ArmCounts()
    epoch_before: ArmCounts = ArmCounts()

    def before(self, policy: RolloutPolicy) -> ArmCounts:
        counts = _Counts()
        for _, tick in self.recent:
            counts.add(tick)
        return counts.arm(policy, None)


def _window(
    policy: RolloutPolicy, candidate: _Counts, stable: _Counts, before: ArmCounts, alpha: float
) -> Window:
    """Both arms' counts in a window, as the service gathers them; ``alpha``: each guardrail's in
    this window."""
    threshold_ms = latency_threshold(policy, int(stable.latency.sum()), stable.ranked_ms, alpha)
    return Window(
        candidate.arm(policy, threshold_ms), stable.arm(policy, None), before, threshold_ms
    )


def _tick(
    rng: np.random.Generator,
    model: ArmModel,
    n: int,
    error_rate: float,
    label_share: float,
) -> _Counts:
    errors = int(rng.binomial(n, error_rate))
    answered = n - errors
    labeled = int(rng.binomial(answered, label_share))
    return _Counts(
        requests=n,
        errors=errors,
        invalid=int(rng.binomial(answered, model.invalid_rate)),
        labeled=labeled,
        correct=int(rng.binomial(labeled, model.accuracy)),
        latency=model.latency_histogram(rng, answered),
    )


def simulate(
    policy: RolloutPolicy,
    stable: ArmModel,
    candidate: ArmModel,
    requests_per_s: float | RateFn,
    label_share: float = 0.0,
    max_s: float = 3600.0,
    seed: int = 0,
    *,
    bursts: Bursts | None = None,
    label_lag_s: float = 0.0,
    pauses: tuple[tuple[float, float], ...] = (),
) -> SimulationResult:
    """Run one rollout tick by tick until it ends or ``max_s`` passes. ``requests_per_s`` may be
    a function of time; ``pauses``: (at_s, for_s) an operator pauses and resumes it."""
    rng = np.random.default_rng(seed)
    rate = requests_per_s if callable(requests_per_s) else (lambda t, r=requests_per_s: r)
    interval = policy.interval_s
    decision = start(policy, "candidate:v1", 0.0)
    state: RolloutState = decision.state
    result = SimulationResult(state.phase, [(0.0, decision)])
    weights = decision.targets
    arms = {"candidate": _Arm(), "stable": _Arm()}
    burst_until, next_burst = -1.0, _next_burst(rng, bursts, 0.0)
    for now in np.arange(-PRIOR_WINDOW_S + interval, 1e-9, interval):  # stable before the start
        n = int(rng.poisson(rate(float(now)) * interval))
        tick = _tick(rng, stable, n, stable.error_rate, label_share)
        arms["stable"].recent.append((float(now), tick))
    for arm in arms.values():
        arm.stage_before = arm.epoch_before = arm.before(policy)
    labels: deque = deque()  # (arrival time, arm name, request time, labeled, correct)
    shadow_rows = shadow_agree = 0
    judged = windows(policy, state, 0.0)
    now = 0.0
    while now < max_s and state.phase not in ("succeeded", "rolled_back"):
        now += interval
        for at_s, for_s in pauses:
            for when, action in ((at_s, "pause"), (at_s + for_s, "resume")):
                if now - interval < when <= now and _can(state, action):
                    decision = act(policy, state, action, when)
                    state, weights = decision.state, decision.targets or weights
                    result.decisions.append((when, decision))
        if bursts is not None and now >= next_burst:
            burst_until, next_burst = now + bursts.length_s, _next_burst(rng, bursts, now)
        in_burst = bursts is not None and now <= burst_until
        current = windows(policy, state, now)
        for arm in arms.values():
            new_stage = current.stage_start != judged.stage_start
            if new_stage:
                arm.stage, arm.stage_before = _Counts(), arm.before(policy)
            if new_stage or current.epoch_start != judged.epoch_start:
                arm.epoch, arm.epoch_before = _Counts(), arm.before(policy)
        judged = current
        n = int(rng.poisson(rate(now) * interval))
        target = weights[policy.candidate]
        shadow = target.role == "shadow"
        n_candidate = 0 if shadow else int(rng.binomial(n, target.weight / 100))
        if shadow:
            shadow_rows += n
            shadow_agree += int(rng.binomial(n, candidate.agreement))
        for name, model, count in (
            ("candidate", candidate, n_candidate),
            ("stable", stable, n - n_candidate),
        ):
            error_rate = bursts.error_rate if in_burst else model.error_rate
            slowed = model.slowed(bursts.latency_factor) if in_burst else model
            tick = _tick(rng, slowed, count, error_rate, label_share)
            labels.append((now + label_lag_s, name, now, tick.labeled, tick.correct))
            arm = arms[name]
            arm.recent.append((now, tick))  # with its labels: the prior looks back in time
            tick = replace(tick, labeled=0, correct=0)  # the windows count labels on arrival
            arm.stage.add(tick)
            arm.epoch.add(tick)
            while arm.recent[0][0] <= now - PRIOR_WINDOW_S:
                arm.recent.popleft()
        while labels and labels[0][0] <= now:
            _, name, at, labeled, correct = labels.popleft()
            for window, since in (
                (arms[name].stage, judged.stage_start),
                (arms[name].epoch, judged.epoch_start),
            ):
                if at > since:
                    window.labeled += labeled
                    window.correct += correct
        stable_arm, candidate_arm = arms["stable"], arms["candidate"]
        stage_alpha, epoch_alpha = guardrail_alphas(policy, judged)
        evidence = Evidence(
            stage=_window(
                policy, candidate_arm.stage, stable_arm.stage, stable_arm.stage_before, stage_alpha
            ),
            epoch=_window(
                policy, candidate_arm.epoch, stable_arm.epoch, stable_arm.epoch_before, epoch_alpha
            ),
            # the arm's own figure, not a sample's: no noise to test (p-value 0)
            divergence=Divergence(candidate.divergence, 0.1, 0.0) if n_candidate else None,
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


def _next_burst(rng: np.random.Generator, bursts: Bursts | None, now: float) -> float:
    return np.inf if bursts is None else now + float(rng.exponential(bursts.every_s))


def _can(state: RolloutState, action: str) -> bool:
    if action == "pause":
        return state.phase in ("progressing", "awaiting_approval")
    return state.phase == "paused"
