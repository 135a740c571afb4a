"""The rollout service: runs each endpoint's rollout controller in the monitor, the one writer.

Every ``interval_s`` (and on an operator's action) for an endpoint with a rollout policy: load the
rollout's state, gather evidence, let traffic/rollout.py decide, then

    1. save the new state (compare-and-swap on its revision, marked "not yet applied") together
       with its webhook events in the outbox, held until the state is applied,
    2. apply its traffic targets to the shared routing state (every gateway worker and replica
       follows it: polling, and LISTEN/NOTIFY on PostgreSQL, so a rollback reaches them all well
       within a second),
    3. mark the state applied (which releases its events to the deliverer), append the evaluation
       to the audit log, export metrics.

A restart between 1 and 3 re-applies the saved state's targets before anything else and then
releases its events, so a decision is never half applied nor left unannounced; a standby monitor
that takes the leader lease does the same at once (service/monitor/leadership.py). Ticks run only on
the leader, and each endpoint's decisions in a process are taken under its own lock (a tick gathers
its evidence outside it, so that an operator's action never waits for a look); an operator's action
may reach any monitor, and the compare-and-swap on the revision refuses a second writer (a 409), so
one transition is applied once whoever decided it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import NamedTuple

from monitors.store import MonitorStore
from service import registry
from service.config import EndpointConfig, GatewayConfig, OfflineGateConfig
from service.crash_points import crash_point
from service.errors import ConfigError, Conflict, NotFound
from service.monitor.evidence import EvidenceGatherer
from service.monitor.metrics import MonitorMetrics
from service.monitor.notifier import Notifier
from service.monitor.offline_gate import offline_gate
from service.state import initial_state
from traffic import rollout
from traffic.rollout import (
    ACTIONS,
    PHASES,
    TERMINAL,
    Decision,
    RolloutError,
    RolloutState,
    Target,
)
from traffic.rollout_checks import PRIOR_WINDOW_S, Evidence, offline_gate_alpha
from traffic.rollout_policy import RolloutPolicy
from traffic.store import (
    OutboxEvent,
    RoutingState,
    StateStore,
    VersionConflict,
    audit_entry,
    compare_and_swap,
)
from traffic.table import EndpointTable, VariantSpec

log = logging.getLogger("gateway.rollout")
NOTIFIED = {"start", "advance", "await_approval", "promote", "succeed", "rollback", "pause"}


class _Look(NamedTuple):
    """The look a tick is due to take: at ``state``, saved as ``revision``; ``within``: how
    close to its label a regressor's answer is right (None for a classifier)."""

    policy: RolloutPolicy
    revision: int
    state: RolloutState
    within: float | None


class RolloutService:
    def __init__(
        self,
        config: GatewayConfig,
        store: MonitorStore,
        state_store: StateStore,
        evidence: EvidenceGatherer,
        metrics: MonitorMetrics,
        notifier: Notifier,
        actor: Callable[[], str] = lambda: "rollout",
    ) -> None:
        """``actor``: who the audit log names for each traffic move (the leader monitor)."""
        self.actor = actor
        self.config = config
        self.regressors = {n for n, e in config.endpoints.items() if e.rollout and _regresses(e)}
        """The endpoints whose models are regressors."""
        self.policies = config.rollout_policies(self.regressors)
        self.gates: dict[str, OfflineGateConfig] = {
            name: e.rollout.offline_gate for name, e in config.endpoints.items() if e.rollout
        }
        self.store = store
        self.state_store = state_store
        self.evidence = evidence
        self.metrics = metrics
        self.notifier = notifier
        self._locks = {name: threading.Lock() for name in self.policies}
        for policy in self.policies.values():
            self._prepare_series(policy)

    # -- reading ---------------------------------------------------------------------------

    def _policy(self, endpoint: str) -> RolloutPolicy:
        if endpoint not in self.policies:
            raise NotFound(
                f"endpoint {endpoint!r} has no rollout policy; with one: {sorted(self.policies)}"
            )
        return self.policies[endpoint]

    def _load(self, endpoint: str) -> tuple[int, RolloutState | None, bool]:
        """(revision, state, applied) as stored; revision 0 and no state before the first start."""
        stored = self.state_store.load_rollout(endpoint)
        if stored is None:
            return 0, None, True
        revision, document = stored
        return revision, RolloutState.from_dict(document["state"]), document["applied"]

    def describe(self, endpoint: str, history: int = 50) -> dict:
        """The rollout's state, policy and its newest evaluations (for operators)."""
        policy = self._policy(endpoint)
        _, state, applied = self._load(endpoint)
        return {
            "endpoint": endpoint,
            "state": state.to_dict() if state else None,
            "applied": applied,
            "policy": policy.to_dict(),
            "policy_hash": policy.policy_hash,
            "history": self.state_store.evaluations(endpoint, history),
        }

    def windows_kept(self) -> dict[str, float]:
        """Endpoint -> the start of the records its rollout's evidence reads (its stage's, and
        stable's just before them), for pruning to spare while the rollout has not ended. A
        rollout may hold a stage past the records' retention (paused, or at a gate, for days), and
        each look judges everything since the stage began: records pruned from under it turn
        that into a window sliding behind the retention, which no false-rollback bound covers."""
        kept = {}
        for endpoint in self.policies:
            _, state, _ = self._load(endpoint)
            if state is not None and state.phase not in TERMINAL:
                kept[endpoint] = state.stage_started - PRIOR_WINDOW_S
        return kept

    def compare_reasons(self, now: float | None = None) -> None:
        """A new verdict on the candidate's reasons for each rollout whose policy compares them
        and whose step is due one (service/monitor/reasons.py); in the analysis thread, as the
        explaining is the costly part. No lock: the verdict names its step, and a rollout that
        moved on meanwhile does not read it."""
        reasons = self.evidence.reasons
        if reasons is None:
            return
        now = now or time.time()
        for endpoint, policy in self.policies.items():
            if not policy.compares("attribution_divergence"):
                continue
            try:
                _, state, _ = self._load(endpoint)
                if state is not None:
                    reasons.compare(policy, state, now)
            except Exception:  # the others still get theirs; this one tries again next run
                log.warning("comparing the reasons of %s failed", endpoint, exc_info=True)

    # -- deciding --------------------------------------------------------------------------

    def tick(self, endpoint: str, now: float | None = None) -> Decision | None:
        """One evaluation of the endpoint's rollout (starting it when its candidate is new).

        The evidence is gathered outside the endpoint's lock: a look reads its whole stage (1.3 s
        at 100,000 users per arm, BENCHMARKS.md, more as a step waits), and an operator's
        rollback waited behind it, past the gateway's wait for the monitor. A look at a rollout
        that changed meanwhile (acted on, its traffic set by hand, a model swapped) decides
        nothing, and what the change calls for is decided as it would be at the next tick."""
        now = now or time.time()
        with self._locks[endpoint]:
            due = self._decide_or_look(endpoint, now)
        if not isinstance(due, _Look):
            return due
        evidence = self.evidence.gather(due.policy, due.state, now, due.within)
        with self._locks[endpoint]:
            still = self._decide_or_look(endpoint, now)
            if not isinstance(still, _Look) or still.revision != due.revision:
                return still if isinstance(still, Decision) else None
            decision = rollout.evaluate(due.policy, due.state, evidence, now)
            self._commit(due.policy, due.revision, decision, evidence, now)
            return decision

    def _decide_or_look(self, endpoint: str, now: float) -> Decision | _Look | None:
        """Under the endpoint's lock: what a tick decides without evidence (a start, an end, a
        pause for traffic set by hand), committed; else the look it needs, or None."""
        policy = self._policy(endpoint)
        revision, state, applied = self._load(endpoint)
        if state is not None and not applied:
            revision = self._reapply(policy, revision, state, now)
        variants = self._variants(policy)
        models = _models(variants)
        if policy.candidate not in models or policy.stable not in models:
            decision = None if state is None else rollout.left_endpoint(policy, state, models)
        else:
            again = None if state is None else _why_again(policy, state, models)
            if state is None or again is not None:
                decision = self._start(policy, models, now, again)
            elif state.phase in TERMINAL:
                decision = None
            else:
                decision = rollout.set_by_hand(policy, state, _at(variants))
                if decision is None:
                    stable_model = models[policy.stable]
                    regresses = endpoint in self.regressors
                    within = registry.accuracy_tolerance(stable_model) if regresses else None
                    return _Look(policy, revision, state, within)
        if decision is not None:
            self._commit(policy, revision, decision, Evidence(), now)
        return decision

    def _reapply(
        self, policy: RolloutPolicy, revision: int, state: RolloutState, now: float
    ) -> int:
        """Finish a transition saved before a crash: its traffic, then its events and an
        audit entry saying so (the decision itself was saved, not yet logged)."""
        self._apply(policy, state, rollout.targets(policy, state), "reapply")
        revision = self._save(policy.endpoint, revision, state, applied=True)
        reason = f"applied after a restart: {state.reason}"
        decision = Decision("reapply", state, reason, cause="restart")
        self.state_store.append_evaluation(
            policy.endpoint, self._entry(policy, decision, Evidence(), now)
        )
        log.warning("rollout %s: %s", policy.endpoint, reason)
        return revision

    def act(self, endpoint: str, action: str, now: float | None = None) -> Decision:
        """An operator's action; ``Conflict`` (409) when it does not fit the phase."""
        if action not in ACTIONS:
            raise NotFound(f"unknown rollout action {action!r}; actions: {list(ACTIONS)}")
        policy = self._policy(endpoint)
        with self._locks[endpoint]:
            now = now or time.time()
            revision, state, _ = self._load(endpoint)
            if action == "start":
                if state is not None and state.phase not in TERMINAL:
                    raise Conflict(f"a rollout of {endpoint!r} is already {state.phase}")
                models = _models(self._variants(policy))
                missing = [n for n in (policy.candidate, policy.stable) if n not in models]
                if missing:
                    raise Conflict(
                        f"{missing} no longer a variant of {endpoint!r} (the stable one leaves "
                        f"after a promotion): update the rollout policy in gateway.yaml"
                    )
                decision = self._start(policy, models, now)
            elif state is None:
                raise Conflict(f"{endpoint!r} has no rollout yet")
            elif _policy_changed(policy, state):
                raise Conflict(
                    f"the rollout policy of {endpoint!r} changed since its rollout began: it "
                    f"starts again at step 1 within {policy.interval_s:g} s; act on it then"
                )
            else:
                try:
                    decision = rollout.act(policy, state, action, now)
                except RolloutError as error:
                    raise Conflict(str(error)) from None
            try:
                self._commit(policy, revision, decision, Evidence(), now)
            except VersionConflict:
                raise Conflict(
                    f"the rollout of {endpoint!r} changed meanwhile (another monitor decided); "
                    "read it again and retry"
                ) from None
            return decision

    def _variants(self, policy: RolloutPolicy) -> dict[str, VariantSpec]:
        """Variant name -> the variant, as the endpoint's routing table has it now."""
        table = self._routing_state().tables.get(policy.endpoint)
        return {v.name: v for v in table.variants} if table else {}

    def _start(
        self, policy: RolloutPolicy, models: dict[str, str], now: float, again: str | None = None
    ) -> Decision:
        candidate_model, stable_model = models[policy.candidate], models[policy.stable]
        gate = self.gates[policy.endpoint]
        offline = None
        if gate.enabled:
            alpha = offline_gate_alpha(policy)
            offline = offline_gate(stable_model, candidate_model, gate.margin, alpha)
        return rollout.start(policy, candidate_model, now, offline, stable_model, again)

    # -- acting ----------------------------------------------------------------------------

    def _save(
        self,
        endpoint: str,
        revision: int,
        state: RolloutState,
        applied: bool,
        events: tuple[OutboxEvent, ...] = (),
    ) -> int:
        revision = self.state_store.save_rollout(
            endpoint, {"state": state.to_dict(), "applied": applied}, revision, events
        )
        if applied:
            self.notifier.wake()
        return revision

    def _events(self, policy: RolloutPolicy, decision: Decision) -> tuple[OutboxEvent, ...]:
        if decision.action not in NOTIFIED:
            return ()
        state = decision.state
        event = {
            "endpoint": policy.endpoint,
            "candidate": state.candidate,
            "phase": state.phase,
            "step": state.step + 1,
            "reason": decision.reason,
            "dry_run": policy.dry_run,
        }
        return tuple(self.notifier.events(f"rollout_{decision.action}", event, policy.endpoint))

    def _commit(
        self,
        policy: RolloutPolicy,
        revision: int,
        decision: Decision,
        evidence: Evidence,
        now: float,
    ) -> None:
        endpoint, state = policy.endpoint, decision.state
        moves = decision.targets is not None and not policy.dry_run
        if moves:  # refused before it is saved, where it could not be applied
            _retarget(self._routing_state(), endpoint, decision.targets)
        events = self._events(policy, decision)
        revision = self._save(endpoint, revision, state, not moves, events)  # persisted first
        if moves:
            crash_point(f"rollout_saved:{decision.action}")
            self._apply(policy, state, decision.targets, decision.action)
            self._save(endpoint, revision, state, applied=True)
        self.state_store.append_evaluation(endpoint, self._entry(policy, decision, evidence, now))
        self._export(policy, decision)
        if decision.action != "hold":
            log.info("rollout %s: %s (%s)", endpoint, decision.action, decision.reason)

    def _routing_state(self) -> RoutingState:
        return self.state_store.load() or initial_state(self.config, self.state_store)

    def _apply(self, policy: RolloutPolicy, state: RolloutState, targets, action: str) -> None:
        """Write the targets into the shared routing state (compare-and-swap) and audit it."""
        self._routing_state()  # made from the config if no worker has started yet
        endpoint = policy.endpoint

        def retarget(current: RoutingState | None) -> RoutingState:
            assert current is not None, "initialised just above; never deleted"
            moved = _retarget(current, endpoint, targets)
            return RoutingState(0, current.source, {**current.tables, endpoint: moved})

        swap = compare_and_swap(self.state_store, retarget)
        if swap.after is None:
            return
        weights = {
            v.name: {"role": v.role, "weight": v.weight, "mirror": v.mirror}
            for v in swap.after.tables[endpoint].variants
        }
        detail = {"variants": weights, "reason": state.reason}
        entry = audit_entry(self.actor(), f"rollout_{action}", endpoint, detail)
        self.state_store.append_audit(entry)

    def _entry(
        self, policy: RolloutPolicy, decision: Decision, evidence: Evidence, now: float
    ) -> dict:
        state = decision.state
        return {
            "at": now,
            "action": decision.action,
            "cause": decision.cause,
            "reason": decision.reason,
            "phase": state.phase,
            "step": state.step + 1,
            "candidate": state.candidate,
            "candidate_model": state.candidate_model,
            "counts": {
                window: {
                    "candidate": asdict(counts.candidate),
                    "stable": asdict(counts.stable),
                    "stable_before": asdict(counts.stable_before),
                    "threshold_ms": counts.threshold_ms,
                }
                for window, counts in (("stage", evidence.stage), ("epoch", evidence.epoch))
            },
            "checks": [c.to_dict() for c in decision.checks],
            "targets": None
            if decision.targets is None
            else {n: t and t.__dict__ for n, t in decision.targets.items()},
            "policy_hash": policy.policy_hash,
            "dry_run": policy.dry_run,
            "by": self.actor(),
        }

    def _prepare_series(self, policy: RolloutPolicy) -> None:
        """Create the promotion, rollback and pause series at 0, so their first increase shows
        (a counter first seen at 1 has no increase in PromQL)."""
        checks = {g.metric for g in policy.guardrails} | {c.metric for c in policy.comparisons}
        causes = {
            "promote": ("steps_passed", "operator"),
            "pause": ("operator", "timeout", "insufficient_data"),
            "rollback": (
                *sorted(checks),
                "operator",
                "timeout",
                "insufficient_data",
                "offline_gate",
            ),
        }
        for action, reasons in causes.items():
            for cause in reasons:
                self.metrics.rollout_decisions.labels(policy.endpoint, action, cause)

    def _export(self, policy: RolloutPolicy, decision: Decision) -> None:
        metrics, state, endpoint = self.metrics, decision.state, policy.endpoint
        for phase in PHASES:
            metrics.rollout_phase.labels(endpoint, phase).set(int(phase == state.phase))
        active = state.phase not in TERMINAL
        metrics.rollout_step.labels(endpoint, state.candidate).set(state.step + 1 if active else 0)
        if decision.action not in ("hold", "none"):
            metrics.rollout_decisions.labels(
                endpoint, decision.action, decision.cause or "none"
            ).inc()
        for check in decision.checks:
            metrics.rollout_checks.labels(endpoint, check.name, check.outcome).inc()


def _why_again(policy: RolloutPolicy, state: RolloutState, models: dict[str, str]) -> str | None:
    """Why the rollout starts again at step 1, or None: its candidate variant serves a new model,
    or, while the rollout is at one of its steps (paused there too), its stable variant serves
    a new model (every check compares the candidate with stable in the same window, and one
    half one model and half another judges it against neither) or its policy changed
    (gateway.yaml edited and the monitor restarted). Evidence judged under other models, steps,
    checks or windows says nothing under these, and the old step may not exist in the new
    steps."""
    candidate_model, stable_model = models[policy.candidate], models[policy.stable]
    if state.candidate_model != candidate_model:
        return None if state.phase == "succeeded" else f"the candidate now serves {candidate_model}"
    if state.at_a_step and state.stable_model not in (None, stable_model):
        return f"stable now serves {stable_model}"
    if _policy_changed(policy, state):
        return "the rollout policy changed"
    return None


def _models(variants: dict[str, VariantSpec]) -> dict[str, str]:
    """Variant name -> the model tag it serves."""
    return {name: variant.model for name, variant in variants.items()}


def _at(variants: dict[str, VariantSpec]) -> dict[str, Target]:
    """Where each variant is in the routing, as a rollout's targets say it."""
    return {name: Target(v.role, v.weight, v.mirror) for name, v in variants.items()}


def _policy_changed(policy: RolloutPolicy, state: RolloutState) -> bool:
    """Whether the policy changed while the rollout is at one of its steps."""
    return state.policy_hash != policy.policy_hash and state.at_a_step


def _retarget(
    routing: RoutingState, endpoint: str, targets: dict[str, Target | None]
) -> EndpointTable:
    """The endpoint's table with the targets written into its variants. ``Conflict`` where the
    endpoint, or a variant the targets move, has left the routing (an operator removed it, or a
    reload did): a rollback would otherwise be saved as done while traffic stayed where it was,
    or could not be applied at all."""
    table = routing.tables.get(endpoint)
    if table is None:
        raise Conflict(
            f"{endpoint!r} is no longer in the routing (a reload removed it): its rollout cannot "
            "move traffic; the monitor drops the rollout when it restarts with that config"
        )
    names = {variant.name for variant in table.variants}
    missing = sorted(n for n, target in targets.items() if target is not None and n not in names)
    if missing:
        raise Conflict(
            f"{missing} no longer a variant of {endpoint!r} (removed from its routing): "
            "the rollout cannot move traffic to it; add it again, or set the weights by hand"
        )
    variants = []
    for variant in table.variants:
        if variant.name not in targets:
            variants.append(variant)
        elif targets[variant.name] is not None:
            target = targets[variant.name]
            variants.append(
                replace(variant, role=target.role, weight=target.weight, mirror=target.mirror)
            )
    return replace(table, variants=tuple(variants))


def _regresses(endpoint: EndpointConfig) -> bool:
    """Whether an endpoint's models are regressors (its variants all do one task); False for
    a model not in the store, which the monitor judges nothing of."""
    try:
        return registry.load_card(endpoint.variants[0].model).task == "regression"
    except ConfigError:
        return False
