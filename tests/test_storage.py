"""The storage layer under the stores: engine errors become the interface's, PostgreSQL's
placeholders and locks, and two monitors writing the same labels at once on one database."""

from __future__ import annotations

import threading

import pytest

from monitors.store import LabelOutcome, MonitorStore
from storage import postgres as engine
from storage.database import StoreUnavailable
from storage.postgres import PostgresDatabase


def test_an_unreachable_postgres_is_unavailable_not_an_engine_error(monkeypatch):
    monkeypatch.setattr(engine, "POOL_TIMEOUT_S", 1.0)
    with pytest.raises(StoreUnavailable, match="the database is unavailable"):
        PostgresDatabase("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")


def test_question_marks_become_placeholders_and_percent_signs_stay_literal(postgres):
    database = PostgresDatabase(postgres.new_database())
    try:
        assert database.query("SELECT ?, 'a%b' LIKE ?", (7, "a%")) == [(7, True)]
    finally:
        database.close()


def test_two_monitors_storing_the_same_labels_at_once_store_each_once(postgres):
    dsn = postgres.new_database()
    stores = [MonitorStore(PostgresDatabase(dsn)) for _ in range(2)]
    labels = [(f"churn:{i:04d}", i % 2) for i in range(300)]
    outcomes: list[list[LabelOutcome]] = []
    start = threading.Barrier(2)

    def write(store: MonitorStore) -> None:
        start.wait()
        outcomes.append(store.add_labels(labels))

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        for i in range(len(labels)):
            assert sorted(o[i] for o in outcomes) == [LabelOutcome.DUPLICATE, LabelOutcome.STORED]
        assert stores[0].db.query("SELECT COUNT(*) FROM labels") == [(300,)]
    finally:
        for store in stores:
            store.db.close()


def test_processes_starting_together_on_a_fresh_database_migrate_once(postgres):
    from traffic.store import SQLStateStore

    dsn = postgres.new_database()
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def open_store() -> None:
        start.wait()
        try:
            SQLStateStore(PostgresDatabase(dsn, 1)).db.close()
        except BaseException as error:  # noqa: BLE001 - any failure fails the test
            failures.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    database = PostgresDatabase(dsn)
    try:
        assert database.query("SELECT component, version FROM schema_versions") == [("routing", 2)]
    finally:
        database.close()
