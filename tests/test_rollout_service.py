"""The rollout service without a server: real stores on both engines, evidence handed in.

Transitions are saved before their traffic is written, and a restart in between re-applies them;
a dry run decides and logs but moves no traffic."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from monitors.store import MonitorStore
from service.config import parse_config
from service.errors import Conflict
from service.monitor.metrics import MonitorMetrics
from service.monitor.notifier import Notifier
from service.monitor.rollouts import RolloutService
from tests.helpers import monitor_in_process
from traffic.rollout_checks import ArmCounts, Evidence, Window
from traffic.store import SQLStateStore

BROKEN = Evidence(
    stage=Window(candidate=ArmCounts(requests=100, errors=90), stable=ArmCounts(requests=900))
)


class HandedEvidence:
    """Evidence the test decides, in place of the monitor's store."""

    def __init__(self) -> None:
        self.evidence = Evidence()
        self.within: float | None = None

    def gather(self, policy, state, now, within) -> Evidence:
        self.within = within
        return self.evidence


def service(
    tmp_path, open_database, webhooks=(), models=("churn:v1", "churn:v2"), **rollout
) -> tuple[RolloutService, HandedEvidence]:
    config = parse_config(
        {
            "data_dir": str(tmp_path),
            "notifications": {"webhooks": list(webhooks)},
            "endpoints": {
                "churn": {
                    "variants": [
                        {"name": "stable", "model": models[0]},
                        {"name": "next", "model": models[1], "role": "candidate", "weight": 0},
                    ],
                    "rollout": {
                        "candidate": "next",
                        "steps": [{"weight": 10}],
                        "offline_gate": {"enabled": False},
                        **rollout,
                    },
                }
            },
        }
    )
    evidence = HandedEvidence()
    metrics = MonitorMetrics(CollectorRegistry())
    state = SQLStateStore(open_database())
    built = RolloutService(
        config,
        MonitorStore(open_database()),
        state,
        evidence,
        metrics,
        Notifier(config.notifications, metrics, state, None),
    )
    return built, evidence


def weights(rollouts: RolloutService) -> dict[str, float]:
    table = rollouts.state_store.load().tables["churn"]
    return {v.name: v.weight for v in table.variants}


def events(rollouts: RolloutService) -> list[tuple[str, int]]:
    """(kind, ready) of each outbox event, oldest first."""
    import json

    return [
        (json.loads(e["body"])["kind"], e["ready"]) for e in reversed(rollouts.state_store.events())
    ]


def test_a_transition_saved_but_not_applied_is_applied_after_a_restart(
    tmp_path, open_database, monkeypatch
):
    hook = "http://127.0.0.1:9/hook"
    rollouts, evidence = service(tmp_path, open_database, webhooks=[hook])
    rollouts.tick("churn", now=1.0)
    assert weights(rollouts) == {"stable": 90, "next": 10}
    evidence.evidence = BROKEN

    def crash(*args, **kwargs):
        raise SystemExit("killed between saving the decision and applying it")

    monkeypatch.setattr(rollouts, "_apply", crash)
    with pytest.raises(SystemExit):
        rollouts.tick("churn", now=2.0)
    described = rollouts.describe("churn")
    assert described["state"]["phase"] == "rolled_back" and not described["applied"]
    assert weights(rollouts) == {"stable": 90, "next": 10}  # not applied yet
    assert events(rollouts) == [("rollout_start", 1), ("rollout_rollback", 0)]  # held back
    restarted, _ = service(tmp_path, open_database, webhooks=[hook])
    assert restarted.tick("churn", now=3.0) is None  # nothing left to decide
    assert weights(restarted) == {"stable": 100, "next": 0}
    assert restarted.describe("churn")["applied"]
    assert events(restarted) == [("rollout_start", 1), ("rollout_rollback", 1)]  # once, ready
    history = restarted.describe("churn")["history"]
    assert [(e["action"], e["cause"]) for e in history] == [
        ("start", ""),
        ("reapply", "restart"),
    ]


def test_a_dry_run_decides_and_logs_but_moves_no_traffic(tmp_path, open_database):
    rollouts, evidence = service(tmp_path, open_database, dry_run=True)
    rollouts.tick("churn", now=1.0)
    evidence.evidence = BROKEN
    decision = rollouts.tick("churn", now=2.0)
    assert decision.action == "rollback"
    assert weights(rollouts) == {"stable": 100, "next": 0}  # the config's, untouched
    history = rollouts.describe("churn")["history"]
    assert [e["action"] for e in history] == ["start", "rollback"]
    assert all(e["dry_run"] for e in history)


def serve_model(rollouts: RolloutService, variant: str, model: str) -> None:
    """An operator's change of the model ``variant`` serves, in the shared routing state."""
    from dataclasses import replace

    from traffic.store import RoutingState

    current = rollouts.state_store.load()
    table = current.tables["churn"]
    swapped = replace(
        table,
        variants=tuple(replace(v, model=model) if v.name == variant else v for v in table.variants),
    )
    rollouts.state_store.save(
        RoutingState(current.version, current.source, {"churn": swapped}), current.version
    )


def set_weights(rollouts: RolloutService, weights: dict[str, float]) -> None:
    """An operator's ``PUT /admin/endpoints/churn/weights``, in the shared routing state."""
    from traffic.store import RoutingState

    current = rollouts.state_store.load()
    table = current.tables["churn"].with_weights(weights)
    rollouts.state_store.save(
        RoutingState(current.version, current.source, {"churn": table}), current.version
    )


def test_a_candidate_turned_off_by_hand_stays_off_until_the_rollout_is_resumed(
    tmp_path, open_database
):
    """With the monitor's API out of reach, setting the candidate's weight to 0 is the way to
    turn it off (docs/operations.md). The rollout's next passing step set its own weights
    again: the candidate was back at 50%. It now pauses and leaves the operator's weights."""
    rollouts, _ = service(
        tmp_path,
        open_database,
        steps=[{"weight": 10, "min_duration_s": 0}, {"weight": 50, "min_duration_s": 0}],
        guardrails=[],
        comparisons=[],
    )
    rollouts.tick("churn", now=1.0)
    assert weights(rollouts) == {"stable": 90, "next": 10}
    (family,) = rollouts.metrics.rollout_decisions.collect()
    pauses = [s.labels["cause"] for s in family.samples if s.labels["action"] == "pause"]
    assert "operator" in pauses  # created at 0: the first pause shows as an increase
    paused = rollouts.metrics.rollout_decisions.labels("churn", "pause", "operator")
    set_weights(rollouts, {"next": 0, "stable": 100})
    decision = rollouts.tick("churn", now=2.0)
    assert decision.action == "pause" and "changed by hand" in decision.reason
    assert paused._value.get() == 1
    for now in (3.0, 4.0, 5.0):
        assert rollouts.tick("churn", now=now).action == "hold"
    assert weights(rollouts) == {"stable": 100, "next": 0}
    rollouts.act("churn", "resume", now=6.0)
    assert weights(rollouts) == {"stable": 90, "next": 10}
    assert rollouts.tick("churn", now=7.0).action == "advance"
    assert weights(rollouts) == {"stable": 50, "next": 50}


def test_a_new_candidate_model_restarts_the_analysis(tmp_path, open_database):
    rollouts, _ = service(tmp_path, open_database)
    rollouts.tick("churn", now=1.0)
    serve_model(rollouts, "next", "churn:v3")
    decision = rollouts.tick("churn", now=5.0)
    assert decision.action == "start" and decision.state.candidate_model == "churn:v3"
    assert decision.state.analysis_started == 5.0
    assert decision.reason.startswith("the candidate now serves churn:v3: started again")


def test_a_new_stable_model_mid_step_restarts_the_analysis(tmp_path, open_database):
    """Each check compares the candidate with stable in the same window; a stable variant that
    began serving another model mid-step (an operator's hot fix) made that window half one model
    and half another, and the rollout went on judging the candidate against the mixture: a
    faster new stable made a healthy candidate look slow, a worse one made a bad candidate look
    fine. The evidence says nothing about the candidate against the new stable: it starts again."""
    rollouts, _ = service(tmp_path, open_database)
    assert rollouts.tick("churn", now=1.0).state.stable_model == "churn:v1"
    assert rollouts.tick("churn", now=2.0).action == "hold"
    serve_model(rollouts, "stable", "churn:v3")
    decision = rollouts.tick("churn", now=5.0)
    assert decision.action == "start" and decision.state.stable_model == "churn:v3"
    assert decision.state.analysis_started == 5.0 and decision.state.step == 0
    assert decision.reason.startswith("stable now serves churn:v3: started again")
    assert rollouts.tick("churn", now=6.0).action == "hold"


def test_starting_again_after_the_old_stable_left_is_a_conflict_not_a_crash(
    tmp_path, open_database
):
    from service.errors import Conflict

    rollouts, _ = service(tmp_path, open_database, revert_window_s=0)
    rollouts.tick("churn", now=1.0)
    rollouts.act("churn", "promote", now=2.0)
    assert rollouts.tick("churn", now=3.0).action == "succeed"  # the old stable leaves
    assert set(weights(rollouts)) == {"next"}
    with pytest.raises(Conflict, match="stable"):
        rollouts.act("churn", "start", now=4.0)


@pytest.mark.parametrize("other_weight", [0, 10])
def test_a_rollback_to_a_stable_variant_an_operator_removed_is_a_conflict_and_changes_nothing(
    tmp_path, open_database, other_weight
):
    """Promoted, the old stable waits at weight 0 for the revert window, and an operator may
    remove it. A rollback then has nowhere to send traffic: saved as done, it either could not be
    applied (a 500, retried on every tick) or left a third variant serving everything."""
    from dataclasses import replace

    from traffic.store import RoutingState
    from traffic.table import VariantSpec

    rollouts, _ = service(tmp_path, open_database, webhooks=["http://127.0.0.1:9/hook"])
    rollouts.tick("churn", now=1.0)
    rollouts.act("churn", "promote", now=2.0)
    current = rollouts.state_store.load()
    table = current.tables["churn"]
    other = VariantSpec("other", "churn:v3", "candidate", float(other_weight))
    edited = replace(table, variants=(table.variant("next"), other))
    rollouts.state_store.save(
        RoutingState(current.version, current.source, {"churn": edited}), current.version
    )
    before = weights(rollouts)
    with pytest.raises(Conflict, match=r"\['stable'\] no longer a variant"):
        rollouts.act("churn", "rollback", now=3.0)
    described = rollouts.describe("churn")
    assert described["state"]["phase"] == "promoted" and described["applied"]
    assert weights(rollouts) == before
    assert [e["action"] for e in described["history"]] == ["start", "promote"]
    assert events(rollouts) == [("rollout_start", 1), ("rollout_promote", 1)]
    ended = rollouts.tick("churn", now=4.0)  # the old stable left: nothing is left to revert to
    assert ended.action == "succeed" and ended.reason.startswith("stable left the endpoint")
    assert weights(rollouts) == before and "churn" not in rollouts.windows_kept()


def test_a_rollout_whose_candidate_was_removed_by_hand_ends_and_frees_its_records(
    tmp_path, open_database
):
    """Its candidate variant removed mid-step (DELETE /admin/endpoints/churn/variants/next),
    the rollout neither judged nor moved anything and stayed at its step for good, sparing
    every record of the endpoint from pruning: stable's traffic piled up without bound."""
    from traffic.store import RoutingState

    rollouts, _ = service(tmp_path, open_database, webhooks=["http://127.0.0.1:9/hook"])
    rollouts.tick("churn", now=1.0)
    assert "churn" in rollouts.windows_kept()
    current = rollouts.state_store.load()
    alone = current.tables["churn"].without_variant("next")
    rollouts.state_store.save(
        RoutingState(current.version, current.source, {"churn": alone}), current.version
    )
    ended = rollouts.tick("churn", now=2.0)
    assert ended.action == "rollback" and ended.state.phase == "rolled_back"
    assert ended.reason.startswith("next left the endpoint") and ended.cause == "operator"
    assert weights(rollouts) == {"stable": 90}  # as the operator left it
    assert "churn" not in rollouts.windows_kept()
    assert events(rollouts)[-1] == ("rollout_rollback", 1)
    assert rollouts.tick("churn", now=3.0) is None


@pytest.mark.parametrize("action", ["rollback", "promote", "resume"])
def test_moving_the_traffic_of_an_endpoint_a_reload_removed_is_a_conflict_and_changes_nothing(
    tmp_path, open_database, action
):
    """A reload applies the file's endpoints at once; a rollout policy changes only when the
    monitor restarts. Meanwhile the endpoint's rollout has no traffic to move (it was a 500)."""
    from traffic.store import RoutingState

    rollouts, _ = service(tmp_path, open_database)
    rollouts.tick("churn", now=1.0)
    if action == "resume":
        rollouts.act("churn", "pause", now=2.0)
    current = rollouts.state_store.load()
    rollouts.state_store.save(RoutingState(current.version, "reloaded", {}), current.version)
    before = rollouts.describe("churn")
    with pytest.raises(Conflict, match="'churn' is no longer in the routing"):
        rollouts.act("churn", action, now=3.0)
    after = rollouts.describe("churn")
    assert after["state"] == before["state"] and after["applied"]
    assert after["history"] == before["history"]
    assert rollouts.state_store.load().tables == {}


def test_a_policy_changed_mid_rollout_starts_it_again_at_step_one(tmp_path, open_database):
    """gateway.yaml edited (here: one step where there were two) and the monitor restarted, as a
    reload's ``restart_required`` asks. At the second step, every tick failed on a step the new
    policy does not have, and an operator's action with it."""
    from dataclasses import replace

    two_steps = [{"weight": 10}, {"weight": 50}]
    rollouts, _ = service(tmp_path, open_database, steps=two_steps)
    rollouts.tick("churn", now=1.0)
    revision, state, _ = rollouts._load("churn")
    at_step_two = replace(state, step=1)
    rollouts._save("churn", revision, at_step_two, applied=False)
    rollouts._reapply(rollouts.policies["churn"], revision + 1, at_step_two, 2.0)
    assert weights(rollouts) == {"stable": 50, "next": 50}
    restarted, _ = service(tmp_path, open_database, steps=[{"weight": 20}])
    with pytest.raises(Conflict, match="changed since its rollout began"):
        restarted.act("churn", "pause", now=3.0)
    decision = restarted.tick("churn", now=4.0)
    assert decision.action == "start" and decision.state.step == 0
    assert decision.state.policy_hash == restarted.policies["churn"].policy_hash
    assert weights(restarted) == {"stable": 80, "next": 20}
    assert restarted.tick("churn", now=5.0).action == "hold"  # judged under the new policy
    restarted.act("churn", "pause", now=6.0)


def test_a_policy_changed_after_the_promotion_leaves_the_rollout_where_it_is(
    tmp_path, open_database
):
    """Promoted (and paused there), the candidate serves everything: starting again would send
    most traffic back to the old stable. A paused promotion was still judged as at its last step,
    one the new policy does not have (every tick failed); it is judged as the promotion it is."""
    from dataclasses import replace

    rollouts, _ = service(tmp_path, open_database, steps=[{"weight": 10}, {"weight": 50}])
    rollouts.tick("churn", now=1.0)
    revision, state, _ = rollouts._load("churn")
    rollouts._save("churn", revision, replace(state, step=1), applied=True)  # at step 2 of 2
    rollouts.act("churn", "promote", now=2.0)
    rollouts.act("churn", "pause", now=3.0)
    promoted = weights(rollouts)
    restarted, _ = service(tmp_path, open_database, steps=[{"weight": 20}])
    assert restarted.tick("churn", now=4.0).action == "hold"
    assert weights(restarted) == promoted == {"stable": 0, "next": 100}
    assert restarted.act("churn", "resume", now=5.0).state.phase == "promoted"


def test_an_operator_action_racing_another_monitor_is_a_conflict_and_changes_nothing(
    tmp_path, open_database, monkeypatch
):
    leader, _ = service(tmp_path, open_database)
    standby, _ = service(tmp_path, open_database)  # a second monitor on the same database
    leader.tick("churn", now=1.0)
    read_before = standby._load("churn")
    leader.act("churn", "pause", now=2.0)  # the leader moves the state on meanwhile
    monkeypatch.setattr(standby, "_load", lambda endpoint: read_before)
    with pytest.raises(Conflict, match="changed meanwhile"):
        standby.act("churn", "pause", now=3.0)
    described = leader.describe("churn")
    assert described["state"]["phase"] == "paused"
    assert [e["action"] for e in described["history"]] == ["start", "pause"]


def test_an_operators_rollback_does_not_wait_for_a_look_and_the_look_then_decides_nothing(
    tmp_path, open_database
):
    """A look reads its whole stage (1.3 s at 100,000 users per arm, more as a step waits), and
    an operator's rollback waited for it behind the endpoint's lock, past the gateway's 10 s wait
    for the monitor: a 503 for a rollback that was then applied anyway."""
    rollouts, evidence = service(tmp_path, open_database)
    rollouts.tick("churn", now=1.0)
    looking, finish = threading.Event(), threading.Event()

    def slow_gather(policy, state, now, within) -> Evidence:
        looking.set()
        finish.wait(10)
        return Evidence()

    evidence.gather = slow_gather
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        tick = pool.submit(rollouts.tick, "churn", 2.0)
        assert looking.wait(5)
        started = time.monotonic()
        decision = rollouts.act("churn", "rollback", now=3.0)
        waited = time.monotonic() - started
        finish.set()
        assert tick.result(10) is None
    assert waited < 1.0 and decision.state.phase == "rolled_back"
    described = rollouts.describe("churn")
    assert [e["action"] for e in described["history"]] == ["start", "rollback"]
    assert described["state"]["phase"] == "rolled_back"
    assert weights(rollouts) == {"stable": 100, "next": 0}


def test_a_regressor_is_judged_on_labels_within_its_stable_models_usual_error(
    tmp_path, open_database, demo_models, regressor_v9
):
    """A regressor's rollout compares accurate shares (answers within the 95th percentile of
    the stable model's absolute errors on its reference) and, unless the policy names it, not
    the distance of its values from stable's, which retraining moves by itself."""
    rollouts, evidence = service(tmp_path, open_database, models=("diabetes:v1", regressor_v9))
    compared = [c.metric for c in rollouts.policies["churn"].comparisons]
    assert compared == ["error_rate", "slow_rate", "accuracy"]
    rollouts.tick("churn", now=1.0)
    rollouts.tick("churn", now=2.0)
    reference = pd.read_csv(demo_models["diabetes:v1"].reference_path)
    features = reference.drop(columns=["label"]).to_numpy(np.float32)
    session = ort.InferenceSession(str(demo_models["diabetes:v1"].onnx_path))
    (values,) = session.run(None, {session.get_inputs()[0].name: features})
    errors = np.abs(values.ravel() - reference["label"].to_numpy())
    assert evidence.within == pytest.approx(np.quantile(errors, 0.95), rel=1e-4)

    named = [{"metric": "prediction_divergence", "margin": 0.5}]
    kept, _ = service(
        tmp_path, open_database, models=("diabetes:v1", regressor_v9), comparisons=named
    )
    assert [c.metric for c in kept.policies["churn"].comparisons] == ["prediction_divergence"]


def test_a_classifiers_rollout_gets_every_default_comparison(tmp_path, open_database, demo_models):
    rollouts, evidence = service(tmp_path, open_database, models=("cancer:v1", "cancer:v2"))
    compared = [c.metric for c in rollouts.policies["churn"].comparisons]
    assert compared == ["error_rate", "slow_rate", "accuracy", "prediction_divergence"]
    rollouts.tick("churn", now=1.0)
    rollouts.tick("churn", now=2.0)
    assert evidence.within is None


def test_the_monitors_pruning_spares_the_records_a_rollout_judges_until_it_ends(
    tmp_path, demo_models, monkeypatch
):
    """Records are kept 7 days by default, and a rollout may hold a stage longer (paused over a
    holiday, or at its approval gate): pruning took the stage's first records, and each look
    judged a window sliding behind the retention instead of the stage since it began."""
    from monitors.records import PredictionRecord

    endpoint = {
        "variants": [
            {"name": "a", "model": "cancer:v1"},
            {"name": "b", "model": "cancer:v2", "role": "candidate", "weight": 0},
        ],
        "rollout": {
            "candidate": "b",
            "steps": [{"weight": 10}],
            "offline_gate": {"enabled": False},
        },
    }
    monitor = monitor_in_process(tmp_path, monkeypatch, {"e": endpoint})
    now, day = 10**9, 86_400.0
    monitor.rollouts.tick("e", now=now - 10 * day)
    monitor.rollouts.act("e", "pause", now=now - 10 * day + 60)
    old = now - 9 * day  # past the 7 days records are kept, inside the rollout's first step
    before = now - 10 * day - 3600  # before the step and the stretch that informs stable's prior
    monitor.store.add_records(
        [PredictionRecord(f"e:{i}", old, "e", "b", "cancer:v2", ["benign"], 0.01) for i in range(3)]
        + [PredictionRecord("e:x", before, "e", "a", "cancer:v1", ["benign"], 0.01)]
    )
    assert monitor.prune(now=now)["predictions"] == 1
    monitor.rollouts.act("e", "rollback", now=now - 60)
    assert monitor.prune(now=now)["predictions"] == 3  # ended: pruned as any record
