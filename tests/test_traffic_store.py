"""The SQLite routing-state store: versions, compare-and-swap, audit, survival across reopen."""

from __future__ import annotations

import pytest

from traffic.store import (
    CAS_ATTEMPTS,
    RoutingState,
    SQLStateStore,
    VersionConflict,
    audit_entry,
    compare_and_swap,
)
from traffic.table import EndpointTable, VariantSpec

TABLE = EndpointTable(
    "churn",
    (
        VariantSpec("stable", "churn:v1", "stable", 90),
        VariantSpec("c", "churn:v2", "candidate", 10),
    ),
)


def test_save_load_and_compare_and_swap(tmp_path):
    store = SQLStateStore.open_sqlite(tmp_path / "state.sqlite3")
    assert store.load() is None and store.current_version() == 0
    first = store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    assert first.version == 1 and store.current_version() == 1
    with pytest.raises(VersionConflict):
        store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)  # somebody already saved v1
    changed = TABLE.with_weights({"c": 50})
    second = store.save(RoutingState(0, "cfg", {"churn": changed}), 1)
    assert second.version == 2
    reopened = SQLStateStore.open_sqlite(tmp_path / "state.sqlite3").load()
    assert reopened.version == 2 and reopened.source == "cfg"
    assert reopened.tables["churn"].variant("c").weight == 50


def test_compare_and_swap_reapplies_a_change_on_top_of_a_concurrent_writer(tmp_path):
    store = SQLStateStore.open_sqlite(tmp_path / "state.sqlite3")
    store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    seen = []

    def halve_candidate(current):
        seen.append(current.version)
        if len(seen) == 1:  # another writer moves the state between our read and our save
            other = current.tables["churn"].with_weights({"c": 20})
            store.save(RoutingState(0, "cfg", {"churn": other}), current.version)
        weight = current.tables["churn"].variant("c").weight
        return RoutingState(0, "cfg", {"churn": TABLE.with_weights({"c": weight // 2})})

    swap = compare_and_swap(store, halve_candidate)
    assert seen == [1, 2], "re-read after the conflict"
    assert swap.before.version == 2 and swap.after.version == 3
    assert store.load().tables["churn"].variant("c").weight == 10  # half of the other's 20


def test_compare_and_swap_saves_nothing_when_the_change_needs_nothing_or_is_refused(tmp_path):
    store = SQLStateStore.open_sqlite(tmp_path / "state.sqlite3")
    store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    assert compare_and_swap(store, lambda current: None).after is None
    with pytest.raises(ValueError):
        compare_and_swap(store, lambda current: (_ for _ in ()).throw(ValueError("no")))
    assert store.current_version() == 1


def test_compare_and_swap_gives_up_on_a_state_that_never_stops_moving(tmp_path):
    store = SQLStateStore.open_sqlite(tmp_path / "state.sqlite3")
    store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)

    def always_beaten(current):
        store.save(RoutingState(0, "cfg", dict(current.tables)), current.version)
        return RoutingState(0, "cfg", dict(current.tables))

    with pytest.raises(VersionConflict):
        compare_and_swap(store, always_beaten)
    assert store.current_version() == 1 + CAS_ATTEMPTS


def test_audit_is_appended_and_read_newest_first(tmp_path):
    store = SQLStateStore.open_sqlite(tmp_path / "state.sqlite3")
    store.append_audit(audit_entry("10.0.0.1", "set_weights", "churn", {"weights": {"c": 5}}))
    store.append_audit(audit_entry("10.0.0.2", "reload", "*", {}))
    entries = store.audit()
    assert [e.action for e in entries] == ["reload", "set_weights"]
    assert entries[1].detail == {"weights": {"c": 5}} and entries[1].client == "10.0.0.1"
    assert len(store.audit(limit=1)) == 1
