"""What goes into the shared routing state from gateway.yaml (service/state.py): a start or a
reload takes from the file only the endpoints it changed since the state was made from it, and
keeps what changed at run time elsewhere; on both engines, through the real store."""

from __future__ import annotations

from dataclasses import replace

from service.config import GatewayConfig, parse_config
from service.state import from_config, initial_state
from traffic.store import RoutingState, SQLStateStore, compare_and_swap


def config(candidate_weight: float = 10, fraud: bool = True, **endpoints) -> GatewayConfig:
    canary = {
        "variants": [
            {"name": "stable", "model": "churn:v1", "weight": 100 - candidate_weight},
            {
                "name": "candidate",
                "model": "churn:v2",
                "role": "candidate",
                "weight": candidate_weight,
            },
        ]
    }
    others = {"fraud": {"variants": [{"name": "stable", "model": "fraud:v1"}]}} if fraud else {}
    return parse_config({"endpoints": {"churn": canary, **others, **endpoints}})


FIRST = config()
SCORING = {"scoring": {"variants": [{"name": "stable", "model": "scoring:v1"}]}}


def promote(store: SQLStateStore) -> RoutingState:
    """What a rollout does once it promoted churn's candidate and its revert window passed."""

    def promoted(state: RoutingState | None) -> RoutingState:
        table = state.tables["churn"]
        (candidate,) = [v for v in table.variants if v.name == "candidate"]
        churn = replace(table, variants=(replace(candidate, role="stable", weight=100.0),))
        return RoutingState(0, state.source, {**state.tables, "churn": churn})

    return compare_and_swap(store, promoted).after


def test_an_edit_that_adds_an_endpoint_keeps_a_promotion_made_at_run_time(open_database):
    """A start or a reload on an edited gateway.yaml made every endpoint the file's: one that
    only added an endpoint sent the promoted candidate back to 10% and its old stable model
    back to 90%."""
    store = SQLStateStore(open_database())
    initial_state(FIRST, store)
    promoted = promote(store)
    edited = config(**SCORING)
    tables, from_file = from_config(edited, SQLStateStore(open_database()).load())
    assert from_file == ["scoring"]
    assert tables["churn"] == promoted.tables["churn"]
    assert tables["fraud"] == promoted.tables["fraud"]
    assert tables["scoring"] == edited.tables()["scoring"]
    started = initial_state(edited, SQLStateStore(open_database()))  # a restart with it
    assert started.tables["churn"] == promoted.tables["churn"]
    assert [e.detail["from_file"] for e in store.audit() if e.action == "initialize"] == [
        ["scoring"],
        ["churn", "fraud"],
    ]


def test_an_unchanged_file_changes_nothing(open_database):
    store = SQLStateStore(open_database())
    initial_state(FIRST, store)
    promoted = promote(store)
    tables, from_file = from_config(FIRST, store.load())
    assert tables == dict(promoted.tables) and from_file == []


def test_an_endpoint_the_file_changed_or_removed_is_the_files(open_database):
    store = SQLStateStore(open_database())
    initial_state(FIRST, store)
    promote(store)
    edited = config(candidate_weight=30, fraud=False)  # the operator's new split, fraud gone
    tables, from_file = from_config(edited, store.load())
    assert from_file == ["churn"] and tables == edited.tables()


def test_a_state_that_does_not_say_what_its_config_declared_takes_the_whole_file(open_database):
    """Made by a release before this one: nothing says which endpoints the file changed, so
    every endpoint is the file's, as before. A start on the same file then notes what it
    declared, so the next edit is judged endpoint by endpoint."""
    store = SQLStateStore(open_database())
    legacy = RoutingState(0, FIRST.routing_hash(), FIRST.tables())
    store.save(legacy, 0)
    promoted = promote(store)
    assert promoted.declared is None and store.load().declared is None
    edited = config(**SCORING)
    tables, from_file = from_config(edited, store.load())
    assert from_file == ["churn", "fraud", "scoring"] and tables == edited.tables()
    kept = initial_state(FIRST, store)  # the same file: nothing to apply, what it declared noted
    assert kept.tables == promoted.tables and store.load().declared == FIRST.tables()
    assert from_config(edited, store.load())[1] == ["scoring"]
