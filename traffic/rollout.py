"""The rollout controller: one state machine, pure, fed with evidence, returning decisions.

    start ─▶ progressing (step 0..n-1) ─▶ promoted (revert window) ─▶ succeeded
                 │  ▲      └─ gate ─▶ awaiting_approval ─ approve ─┘
                 ▼  │ resume
               paused            any guardrail FAIL, any required comparison FAIL,
                                 timeout or no data for too long (if so configured) ─▶ rolled_back

Each evaluation: guardrails first (limits on gross failure; a FAIL rolls back at once, also
while paused, awaiting approval or inside the revert window after promotion), then comparisons of
candidate against stable in the current step. All required comparisons PASS continuously for the
step's minimum duration: advance. Any INSUFFICIENT: hold; after ``max_insufficient_s`` apply
``on_insufficient``. Abort beats promote: a FAIL is acted on before anything else. Every check is
an always-valid test spending its share of the rollout's ``alpha`` (traffic/rollout_checks.py), so
however often it looks and however long it waits, a healthy candidate is rolled back with
probability at most ``alpha`` (input drift, a check on the traffic, is the one exception). The
service layer gathers the evidence of ``windows(...)``, persists each new state before it applies
the decision's traffic targets, and appends every decision to the audit.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal, get_args

from traffic.rollout_checks import (
    DISTANCE_METRICS,
    CheckResult,
    Evidence,
    Windows,
    applies,
    check_comparison,
    check_guardrail,
    comparison_alpha,
    divergence,
    guardrail_alphas,
)
from traffic.rollout_policy import RolloutPolicy

Phase = Literal[
    "progressing", "awaiting_approval", "paused", "promoted", "succeeded", "rolled_back"
]
PHASES: tuple[Phase, ...] = get_args(Phase)
TERMINAL = ("succeeded", "rolled_back")
ManualAction = Literal["pause", "resume", "approve", "promote", "rollback"]
ACTIONS: tuple[str, ...] = ("start", *get_args(ManualAction))
"""What an operator may ask of a rollout: start one, or a manual action."""


class RolloutError(ValueError):
    """A manual action that does not fit the rollout's phase."""


@dataclass(frozen=True)
class RolloutState:
    endpoint: str
    candidate: str
    stable: str
    candidate_model: str
    phase: Phase
    step: int
    started: float
    step_started: float
    analysis_started: float
    policy_hash: str
    passing_since: float | None = None
    insufficient_since: float | None = None
    promoted_at: float | None = None
    resume_phase: Phase | None = None
    guard_history: Mapping[str, tuple[bool, ...]] = field(default_factory=dict)
    reason: str = ""
    epochs_before_stage: int = 0
    """Guardrail epochs the analysis went through before the current stage began."""
    verdicts_read: Mapping[str, tuple[int, float, float]] = field(default_factory=dict)
    """Each distance comparison's verdicts read at the current step while they could act: (how
    many, the last one's distance and p-value)."""
    stable_model: str | None = None
    """The model the stable variant served when the rollout started (None in a state saved
    before this was kept): the candidate is judged against it."""

    @property
    def at_a_step(self) -> bool:
        """Whether the rollout is at one of its policy's steps (paused at one too): not yet
        promoted, nor ended."""
        phase = self.resumes_as if self.phase == "paused" else self.phase
        return phase in ("progressing", "awaiting_approval")

    @property
    def resumes_as(self) -> Phase:
        """The phase a paused rollout resumes in (a pause the rollout applied itself, on a
        timeout or on insufficient data, came from progressing)."""
        return self.resume_phase or "progressing"

    @property
    def stage_started(self) -> float:
        """When the current stage began: the step's start, or the promotion."""
        return self.step_started if self.at_a_step else self.promoted_at

    def to_dict(self) -> dict:
        data = asdict(self)
        data["guard_history"] = {k: list(v) for k, v in self.guard_history.items()}
        data["verdicts_read"] = {k: list(v) for k, v in self.verdicts_read.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> RolloutState:
        """A state as saved, by this version or another: a field this version does not know
        (a newer monitor's, while monitors of two versions run side by side in an upgrade) is
        left out, and one a state saved before it lacks takes its default."""
        history = {k: tuple(v) for k, v in data.get("guard_history", {}).items()}
        verdicts = {k: tuple(v) for k, v in data.get("verdicts_read", {}).items()}
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        return cls(**{**kept, "guard_history": history, "verdicts_read": verdicts})


@dataclass(frozen=True)
class Target:
    """Where a variant should be: its role, weight (percent) and mirror fraction."""

    role: str
    weight: float
    mirror: float = 0.0


@dataclass(frozen=True)
class Decision:
    action: str
    state: RolloutState
    reason: str
    checks: tuple[CheckResult, ...] = ()
    targets: Mapping[str, Target | None] | None = None
    """Traffic to apply (None: unchanged); a variant mapped to None leaves the endpoint."""
    cause: str = ""
    """What decided it, in a word fit for a metric label: a check's name, "operator", "timeout",
    "insufficient_data", "offline_gate", "steps_passed", "revert_window"."""


def windows(policy: RolloutPolicy, state: RolloutState, now: float) -> Windows:
    """The windows an evaluation at ``now`` judges: the current stage, and its current guardrail
    epoch (``guard_window_s`` long, counted from the stage's start)."""
    start = state.stage_started
    into = max(0, int((now - start) // policy.guard_window_s))
    stage = state.step + 1 if state.at_a_step else len(policy.steps) + 1
    epoch = state.epochs_before_stage + into + 1
    return Windows(start, start + into * policy.guard_window_s, stage, epoch)


def _new_stage(policy: RolloutPolicy, state: RolloutState, now: float) -> int:
    """``epochs_before_stage`` for a stage beginning at ``now``."""
    return windows(policy, state, now).epoch


def targets(policy: RolloutPolicy, state: RolloutState) -> dict[str, Target | None]:
    """The traffic the rollout's state calls for. Promoted: the old stable stays loaded at weight
    0 for the revert window; succeeded: it leaves the endpoint."""
    candidate, stable = state.candidate, state.stable
    if state.phase == "rolled_back":
        return {candidate: Target("candidate", 0.0), stable: Target("stable", 100.0)}
    if state.phase == "promoted":
        return {candidate: Target("stable", 100.0), stable: Target("candidate", 0.0)}
    if state.phase == "succeeded":
        return {candidate: Target("stable", 100.0), stable: None}
    step = policy.steps[state.step]
    if step.shadow:
        return {candidate: Target("shadow", 0.0, 1.0), stable: Target("stable", 100.0)}
    return {
        candidate: Target("candidate", step.weight),
        stable: Target("stable", 100.0 - step.weight),
    }


def even_shares(policy: RolloutPolicy, state: RolloutState) -> dict[str, float]:
    """At a step with traffic, the share of each arm's units that evidence read over one span
    of it takes so that both arms give as many: the smaller weight over each arm's (at a 5% step,
    all of the candidate's and 5/95 of stable's)."""
    weight = policy.steps[state.step].weight
    weights = {state.candidate: weight, state.stable: 100.0 - weight}
    smaller = min(weights.values())
    return {arm: smaller / w if w > 0 else 1.0 for arm, w in weights.items()}


def start(
    policy: RolloutPolicy,
    candidate_model: str,
    now: float,
    offline: CheckResult | None = None,
    stable_model: str | None = None,
    again: str | None = None,
) -> Decision:
    """A new rollout at step 0, unless the offline gate failed: then it ends before any traffic.
    ``again``: why a rollout under way starts over (its reasons say so)."""
    state = RolloutState(
        policy.endpoint,
        policy.candidate,
        policy.stable,
        candidate_model,
        "progressing",
        0,
        now,
        now,
        now,
        policy.policy_hash,
        stable_model=stable_model,
    )
    checks = (offline,) if offline else ()
    over = f"{again}: started again; " if again else ""
    if offline is not None and offline.outcome != "PASS":
        reason = f"{over}offline gate: {offline.reason}"
        return _end(policy, state, "rollback", "rolled_back", reason, checks, "offline_gate")
    passed = f"offline gate passed ({offline.reason})" if offline else "started"
    reason = f"{over}{passed}; step 1"
    state = replace(state, reason=reason)
    return Decision("start", state, reason, checks, targets(policy, state))


def evaluate(
    policy: RolloutPolicy, state: RolloutState, evidence: Evidence, now: float
) -> Decision:
    """One tick: every check PASS, FAIL or INSUFFICIENT, and what follows from them."""
    if state.phase in TERMINAL:
        return Decision("none", state, f"rollout {state.phase}")
    shadow_step = state.at_a_step and policy.steps[state.step].shadow
    checks, history = [], dict(state.guard_history)
    judged = windows(policy, state, now)
    guard_alphas = guardrail_alphas(policy, judged)
    for guard in policy.guardrails:
        result, history[guard.metric] = check_guardrail(
            guard, evidence, guard_alphas, history.get(guard.metric, ())
        )
        checks.append(_acting(result, policy))
    alpha = comparison_alpha(policy, judged)
    verdicts = _verdicts_read(policy, state, evidence)
    for comparison in policy.comparisons:
        if applies(comparison, shadow_step):
            verdict = verdicts.get(comparison.metric, (1,))[0]
            result = check_comparison(comparison, evidence, alpha, verdict)
            checks.append(_acting(result, policy))
    state = replace(state, guard_history=history, verdicts_read=verdicts)
    checks = tuple(checks)

    broken = [c for c in checks if c.lane == "guardrail" and c.acting and c.outcome == "FAIL"]
    if broken:
        reason = f"guardrail: {broken[0].reason}"
        return _end(policy, state, "rollback", "rolled_back", reason, checks, broken[0].name)
    if state.phase == "promoted":
        if now - state.promoted_at >= policy.revert_window_s:
            reason = "revert window passed"
            return _end(policy, state, "succeed", "succeeded", reason, checks, "revert_window")
        return _hold(state, "promoted; guardrails watched for the revert window", checks)
    if state.phase in ("paused", "awaiting_approval"):
        return _hold(state, state.reason, checks)
    if now - state.started >= policy.timeout_s:
        reason = f"timed out after {policy.timeout_s:g} s"
        return _apply(policy, state, policy.on_timeout, reason, checks, "timeout")

    required = [c for c in checks if c.lane == "comparison" and c.required and c.acting]
    failed = [c for c in required if c.outcome == "FAIL"]
    if failed:
        reason = f"{failed[0].name}: {failed[0].reason}"
        return _end(policy, state, "rollback", "rolled_back", reason, checks, failed[0].name)
    waiting = [c for c in required if c.outcome == "INSUFFICIENT"]
    if waiting:
        since = state.insufficient_since or now
        state = replace(state, passing_since=None, insufficient_since=since)
        if now - since >= policy.max_insufficient_s:
            reason = f"insufficient data for {now - since:.0f} s ({waiting[0].name})"
            return _apply(
                policy, state, policy.on_insufficient, reason, checks, "insufficient_data"
            )
        return _hold(state, f"holding: {waiting[0].name}: {waiting[0].reason}", checks)
    passing = state.passing_since or now
    state = replace(state, passing_since=passing, insufficient_since=None)
    step = policy.steps[state.step]
    if now - passing < step.min_duration_s:
        return _hold(
            state,
            f"step {state.step + 1} passing for {now - passing:.0f} of {step.min_duration_s:g} s",
            checks,
        )
    return _advance(policy, state, now, checks)


def _verdicts_read(
    policy: RolloutPolicy, state: RolloutState, evidence: Evidence
) -> Mapping[str, tuple[int, float, float]]:
    """``verdicts_read`` with this evaluation's, for the policy's distance comparisons. A verdict
    counts while the comparisons act (the rollout progressing); one the same as the last read is
    the same test of the same window, which cannot fail where it did not before, and is not
    counted again (a verdict on reasons comes at most every 300 s, the rollout looks every 10 s,
    and a step's first units stop changing once they are as many as a verdict reads)."""
    if state.phase != "progressing":
        return state.verdicts_read
    read = dict(state.verdicts_read)
    for metric in (m for m in DISTANCE_METRICS if policy.compares(m)):
        found = divergence(metric, evidence)
        count, *last = read.get(metric, (0, None, None))
        if found is not None and last != [found.distance, found.p_value]:
            read[metric] = (count + 1, found.distance, found.p_value)
    return read


def left_endpoint(
    policy: RolloutPolicy, state: RolloutState, variants: Collection[str]
) -> Decision | None:
    """The end of a rollout one of whose variants left the endpoint (``variants``: those it
    has now), removed by hand or by a reload: it could neither judge nor move traffic, and it
    stayed in its phase for good, sparing every record of the endpoint from pruning. Promoted
    and only the old stable gone, it succeeded (what succeeding does is remove it); otherwise it
    is rolled back. Either way the traffic stays as it is: there is nothing left to move it
    to. None while both are there, or once the rollout has ended."""
    gone = [name for name in (state.candidate, state.stable) if name not in variants]
    if not gone or state.phase in TERMINAL:
        return None
    phase = state.resumes_as if state.phase == "paused" else state.phase
    done = gone == [state.stable] and phase == "promoted"
    action, ended = ("succeed", "succeeded") if done else ("rollback", "rolled_back")
    why = (
        f"{' and '.join(gone)} left the endpoint (removed by hand, or by a reload): the "
        "rollout ends here and leaves the traffic as it is"
    )
    state = replace(state, phase=ended, resume_phase=None, reason=why)
    return Decision(action, state, why, cause="operator")


def set_by_hand(
    policy: RolloutPolicy, state: RolloutState, routing: Mapping[str, Target | None]
) -> Decision | None:
    """A pause when the routing no longer has the traffic the rollout set (``routing``: where
    its two variants are now): someone set it by hand (an operator turning the candidate off
    while the monitor's API is out of reach, a reload of the endpoint edited). The rollout's
    next step would set its own weights again and undo that. Paused, it leaves them; resuming
    sets its own again. None where the routing is as the rollout left it, or the rollout holds no
    traffic of its own (paused already, ended, or a dry run that never set any)."""
    if policy.dry_run or state.phase in (*TERMINAL, "paused"):
        return None
    wanted = targets(policy, state)
    if all(_same(routing.get(name), target) for name, target in wanted.items()):
        return None
    why = (
        f"the routing was changed by hand ({_placed(routing, wanted)}; the rollout set "
        f"{_placed(wanted, wanted)}): paused so that it does not undo that; resume it to set "
        "its traffic again, or roll it back"
    )
    paused = replace(state, phase="paused", resume_phase=state.phase, reason=why)
    return Decision("pause", paused, why, cause="operator")


def _same(found: Target | None, wanted: Target | None) -> bool:
    if found is None or wanted is None:
        return found is wanted
    return (
        found.role == wanted.role
        and math.isclose(found.weight, wanted.weight, abs_tol=1e-9)
        and math.isclose(found.mirror, wanted.mirror, abs_tol=1e-9)
    )


def _placed(where: Mapping[str, Target | None], names: Collection[str]) -> str:
    """Where ``where`` puts each of ``names``, in words: "next candidate at 5%, ..."."""
    return ", ".join(f"{name} {_where(where.get(name))}" for name in names)


def _where(target: Target | None) -> str:
    if target is None:
        return "gone"
    if target.role == "shadow":
        return f"mirroring {target.mirror:.0%}"
    return f"{target.role} at {target.weight:g}%"


def act(policy: RolloutPolicy, state: RolloutState, action: ManualAction, now: float) -> Decision:
    """An operator's action; ``RolloutError`` when it does not fit the phase."""
    if state.phase in TERMINAL:
        raise RolloutError(f"the rollout has ended ({state.phase})")
    if action == "rollback":
        reason = "rolled back by an operator"
        return _end(policy, state, "rollback", "rolled_back", reason, (), "operator")
    if action == "promote":
        if state.phase == "promoted":
            raise RolloutError("the candidate is already promoted")
        return _promote(policy, state, now, "promoted by an operator", (), "operator")
    if action == "pause":
        if state.phase == "paused":
            raise RolloutError("the rollout is already paused")
        paused = replace(
            state, phase="paused", resume_phase=state.phase, reason="paused by an operator"
        )
        return Decision("pause", paused, paused.reason, cause="operator")
    if action == "resume":
        if state.phase != "paused":
            raise RolloutError(f"only a paused rollout resumes (it is {state.phase})")
        resumed = replace(
            state,
            phase=state.resumes_as,
            resume_phase=None,
            started=now,  # resuming restarts the clock the timeout counts on
            passing_since=None,
            insufficient_since=None,
            reason="resumed by an operator",
        )
        return Decision("resume", resumed, resumed.reason, (), targets(policy, resumed), "operator")
    if state.phase != "awaiting_approval":
        raise RolloutError(f"nothing awaits approval (the rollout is {state.phase})")
    return _next_step(policy, state, now, "approved by an operator", (), "operator")


def _acting(result: CheckResult, policy: RolloutPolicy) -> CheckResult:
    """A dry-run check is evaluated and logged, never acted on. (A dry run of the whole policy
    decides as usual; the service layer then leaves the traffic as it is.)"""
    if result.name in policy.dry_run_checks:
        return replace(result, acting=False)
    return result


def _hold(state: RolloutState, reason: str, checks: tuple) -> Decision:
    return Decision("hold", replace(state, reason=reason), reason, checks)


def _advance(policy: RolloutPolicy, state: RolloutState, now: float, checks: tuple) -> Decision:
    if policy.steps[state.step].gate:
        reason = f"step {state.step + 1} passed; awaiting approval"
        return Decision(
            "await_approval",
            replace(state, phase="awaiting_approval", reason=reason),
            reason,
            checks,
            cause="steps_passed",
        )
    return _next_step(policy, state, now, f"step {state.step + 1} passed", checks, "steps_passed")


def _next_step(
    policy: RolloutPolicy, state: RolloutState, now: float, why: str, checks: tuple, cause: str
) -> Decision:
    if state.step + 1 >= len(policy.steps):
        return _promote(policy, state, now, f"{why}; last step done", checks, cause)
    state = replace(
        state,
        phase="progressing",
        step=state.step + 1,
        step_started=now,
        epochs_before_stage=_new_stage(policy, state, now),
        verdicts_read={},
        passing_since=None,
        insufficient_since=None,
        reason=f"{why}; step {state.step + 2} at {policy.steps[state.step + 1].weight:g}%",
    )
    return Decision("advance", state, state.reason, checks, targets(policy, state), cause)


def _promote(
    policy: RolloutPolicy, state: RolloutState, now: float, why: str, checks: tuple, cause: str
) -> Decision:
    state = replace(
        state,
        phase="promoted",
        promoted_at=now,
        resume_phase=None,
        reason=why,
        epochs_before_stage=_new_stage(policy, state, now),
    )
    return Decision("promote", state, why, checks, targets(policy, state), cause)


def _end(
    policy: RolloutPolicy,
    state: RolloutState,
    action: str,
    phase: Phase,
    why: str,
    checks: tuple,
    cause: str,
) -> Decision:
    state = replace(state, phase=phase, resume_phase=None, reason=why)
    return Decision(action, state, why, checks, targets(policy, state), cause)


def _apply(
    policy: RolloutPolicy, state: RolloutState, action: str, why: str, checks: tuple, cause: str
) -> Decision:
    """The configured action for a timeout or a lack of data: pause (for a human) or roll back."""
    if action == "rollback":
        return _end(policy, state, "rollback", "rolled_back", why, checks, cause)
    paused = replace(state, phase="paused", resume_phase=None, reason=f"{why}; paused")
    return Decision("pause", paused, paused.reason, checks, cause=cause)
