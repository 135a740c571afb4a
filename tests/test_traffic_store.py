"""The routing-state store on both engines: versions, compare-and-swap, audit, survival across
reopen, leases."""

from __future__ import annotations

import asyncio
import time

import pytest

from storage.postgres import PostgresDatabase, listen_forever
from storage.schema import installed_version
from traffic.store import (
    CAS_ATTEMPTS,
    ROUTING_CHANNEL,
    SCHEMA,
    OutboxEvent,
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


def test_save_load_and_compare_and_swap(open_database):
    store = SQLStateStore(open_database())
    assert store.load() is None and store.current_version() == 0
    first = store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    assert first.version == 1 and store.current_version() == 1
    with pytest.raises(VersionConflict):
        store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)  # somebody already saved v1
    changed = TABLE.with_weights({"c": 50})
    second = store.save(RoutingState(0, "cfg", {"churn": changed}), 1)
    assert second.version == 2
    reopened = SQLStateStore(open_database()).load()
    assert reopened.version == 2 and reopened.source == "cfg"
    assert reopened.tables["churn"].variant("c").weight == 50


def test_compare_and_swap_reapplies_a_change_on_top_of_a_concurrent_writer(open_database):
    store = SQLStateStore(open_database())
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


def test_compare_and_swap_saves_nothing_when_the_change_needs_nothing_or_is_refused(open_database):
    store = SQLStateStore(open_database())
    store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    assert compare_and_swap(store, lambda current: None).after is None
    with pytest.raises(ValueError):
        compare_and_swap(store, lambda current: (_ for _ in ()).throw(ValueError("no")))
    assert store.current_version() == 1


def test_compare_and_swap_gives_up_on_a_state_that_never_stops_moving(open_database):
    store = SQLStateStore(open_database())
    store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)

    def always_beaten(current):
        store.save(RoutingState(0, "cfg", dict(current.tables)), current.version)
        return RoutingState(0, "edited cfg", dict(current.tables))  # a change: it must be saved

    with pytest.raises(VersionConflict):
        compare_and_swap(store, always_beaten)
    assert store.current_version() == 1 + CAS_ATTEMPTS


def test_compare_and_swap_saves_no_version_for_a_change_that_changes_nothing(open_database):
    """Each writer (a worker at start, the admin API, a rollout) used to decide this for itself."""
    store = SQLStateStore(open_database())
    store.save(RoutingState(0, "cfg", {"churn": TABLE}), 0)
    swap = compare_and_swap(store, lambda current: RoutingState(0, "cfg", dict(current.tables)))
    assert swap.after is None and swap.before.version == store.current_version() == 1


def test_audit_is_appended_and_read_newest_first(open_database):
    store = SQLStateStore(open_database())
    store.append_audit(audit_entry("10.0.0.1", "set_weights", "churn", {"weights": {"c": 5}}))
    store.append_audit(audit_entry("10.0.0.2", "reload", "*", {}))
    entries = store.audit()
    assert [e.action for e in entries] == ["reload", "set_weights"]
    assert entries[1].detail == {"weights": {"c": 5}} and entries[1].client == "10.0.0.1"
    assert len(store.audit(limit=1)) == 1


def test_a_lease_has_one_holder_until_it_lapses_or_is_released(open_database):
    store = SQLStateStore(open_database())
    other = SQLStateStore(open_database())  # a second process (or machine) on the same database
    assert store.hold_lease("leader", "a", ttl_s=30) == 1
    assert other.hold_lease("leader", "b", ttl_s=30) is None  # a holds it
    assert store.hold_lease("leader", "a", ttl_s=30) == 1  # a renewal keeps the term
    assert other.lease("leader").holder == "a" and other.lease("leader").expires_in_s > 25
    store.release_lease("leader", "a")
    assert other.hold_lease("leader", "b", ttl_s=0.2) == 2  # handed over at once, a new term
    assert store.hold_lease("leader", "a", ttl_s=30) is None
    time.sleep(0.3)  # b stopped renewing: its lease lapsed
    assert store.hold_lease("leader", "a", ttl_s=30) == 3
    assert store.lease("nobody") is None


def test_rollout_state_moves_by_compare_and_swap_and_releases_its_events_once_applied(
    open_database,
):
    store = SQLStateStore(open_database())
    event = OutboxEvent("e1", "http://127.0.0.1:9/hook", '{"id": "e1"}', "churn")
    assert store.save_rollout("churn", {"step": 0, "applied": False}, 0, [event]) == 1
    assert store.due_events(time.time() + 1) == []  # held until the state is applied
    with pytest.raises(VersionConflict):
        store.save_rollout("churn", {"step": 1, "applied": True}, 0)  # a second writer
    assert store.save_rollout("churn", {"step": 0, "applied": True}, 1) == 2
    assert [e.id for e in store.due_events(time.time() + 1)] == ["e1"]
    store.event_attempted(event, "delivered", "200")
    assert store.due_events(time.time() + 1) == [] and store.load_rollout("churn")[0] == 2
    assert store.prune(0, 0, time.time() + 1) == {"audit": 0, "evaluations": 0, "events": 1}


def test_the_schema_is_versioned_migrated_once_and_a_newer_one_refused(open_database):
    database = open_database()
    SQLStateStore(database)
    SQLStateStore(open_database())  # a second start finds it current and changes nothing
    assert installed_version(database, SCHEMA.component) == SCHEMA.version
    database.run("UPDATE schema_versions SET version = ? WHERE component = ?", (99, "routing"))
    with pytest.raises(RuntimeError, match="newer than this release"):
        SQLStateStore(open_database())


async def test_a_saved_version_is_announced_to_listeners_on_postgres(postgres):
    dsn = postgres.new_database()
    store = SQLStateStore(PostgresDatabase(dsn))
    heard: asyncio.Queue[str] = asyncio.Queue()
    connected = asyncio.Event()
    listener = asyncio.create_task(
        listen_forever(dsn, ROUTING_CHANNEL, heard.put_nowait, connected.set)
    )
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.to_thread(store.save, RoutingState(0, "cfg", {"churn": TABLE}), 0)
        assert await asyncio.wait_for(heard.get(), 5) == "1"
    finally:
        listener.cancel()
        store.db.close()
