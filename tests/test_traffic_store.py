"""The SQLite routing-state store: versions, compare-and-swap, audit, survival across reopen."""

from __future__ import annotations

import pytest

from traffic.store import RoutingState, SQLiteStateStore, VersionConflict, audit_entry
from traffic.table import EndpointTable, VariantSpec

TABLE = EndpointTable(
    "churn",
    (
        VariantSpec("stable", "churn:v1", "stable", 90),
        VariantSpec("c", "churn:v2", "candidate", 10),
    ),
)


def test_save_load_and_compare_and_swap(tmp_path):
    store = SQLiteStateStore(tmp_path / "state.sqlite3")
    assert store.load() is None and store.current_version() == 0
    first = store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    assert first.version == 1 and store.current_version() == 1
    with pytest.raises(VersionConflict):
        store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)  # somebody already saved v1
    changed = TABLE.with_weights({"c": 50})
    second = store.save(RoutingState(0, "cfg", {"churn": changed}), 1)
    assert second.version == 2
    reopened = SQLiteStateStore(tmp_path / "state.sqlite3").load()
    assert reopened.version == 2 and reopened.source == "cfg"
    assert reopened.tables["churn"].variant("c").weight == 50


def test_audit_is_appended_and_read_newest_first(tmp_path):
    store = SQLiteStateStore(tmp_path / "state.sqlite3")
    store.append_audit(audit_entry("10.0.0.1", "set_weights", "churn", {"weights": {"c": 5}}))
    store.append_audit(audit_entry("10.0.0.2", "reload", "*", {}))
    entries = store.audit()
    assert [e.action for e in entries] == ["reload", "set_weights"]
    assert entries[1].detail == {"weights": {"c": 5}} and entries[1].client == "10.0.0.1"
    assert len(store.audit(limit=1)) == 1
