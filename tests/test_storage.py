"""The storage layer under the stores: engine errors become the interface's, PostgreSQL's
placeholders and locks, two monitors writing the same labels at once on one database, a record
and its label stored at once by two monitors (each interleaving forced with a lock), and SQLite
files no other user can read."""

from __future__ import annotations

import os
import stat
import threading

import psycopg
import pytest

from monitors.records import PredictionRecord
from monitors.store import LabelOutcome, MonitorStore
from storage import postgres as engine
from storage.database import StoreUnavailable
from storage.postgres import PostgresDatabase
from storage.sqlite import SQLiteDatabase
from tests.helpers import until


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
    from traffic.store import SCHEMA, SQLStateStore

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
        versions = database.query("SELECT component, version FROM schema_versions")
        assert versions == [("routing", SCHEMA.version)] and SCHEMA.version >= 2
    finally:
        database.close()


def _record(request_id: str) -> PredictionRecord:
    return PredictionRecord(request_id, 1000.0, "churn", "stable", "churn:v1", ["yes"], 0.002)


def _in_background(call) -> threading.Thread:
    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _wait_until_blocked(database: PostgresDatabase, timeout_s: float = 10.0) -> None:
    """Until some session waits for a lock another holds (the interleaving a test forces)."""

    def blocked() -> bool:
        return database.query("SELECT COUNT(*) FROM pg_locks WHERE NOT granted") != [(0,)]

    assert until(blocked, timeout_s, every_s=0.01), "no session came to wait for the blocker's lock"


def test_a_label_stored_while_another_monitor_stores_its_record_is_joined(postgres):
    """One monitor decides a label must wait (its record is not there), another then stores the
    record and looks for waiting labels before the first has written its label: each misses
    the other. The label is joined all the same, without waiting for pruning.

    Forced here: an uncommitted label with the same id makes the label's insert wait after the
    decision; the record is stored meanwhile; then the blocker gives way."""
    dsn = postgres.new_database()
    store = MonitorStore(PostgresDatabase(dsn))
    blocker = psycopg.connect(dsn)
    try:
        blocker.execute(
            "INSERT INTO labels (request_id, label, received_at) VALUES ('raced', '0', 0)"
        )
        labeling = _in_background(lambda: store.add_label("raced", "yes"))
        _wait_until_blocked(store.db)
        store.add_records([_record("raced")])
        blocker.rollback()
        labeling.join()
        assert store.pending_labels() == 0
        assert store.labeled("churn", "stable").label.tolist() == ["yes"]
    finally:
        blocker.close()
        store.db.close()


def test_a_record_stored_while_another_monitor_stores_its_label_is_joined(postgres):
    """The other side of the same race: a monitor storing a record looks for waiting labels
    before its record is committed, and a label stored in between decides it must wait. The
    label is joined all the same.

    Forced here: a reward waiting for the same record, locked by another session, stops the
    record's monitor while it releases what waits for the record."""
    dsn = postgres.new_database()
    store = MonitorStore(PostgresDatabase(dsn))
    store.add_rewards([("raced", "revenue", 1.0, 3600.0)])
    blocker = psycopg.connect(dsn)
    try:
        blocker.execute("SELECT * FROM rewards WHERE request_id = 'raced' FOR UPDATE")
        recording = _in_background(lambda: store.add_records([_record("raced")]))
        _wait_until_blocked(store.db)
        store.add_label("raced", "yes")
        blocker.rollback()
        recording.join()
        assert store.pending_labels() == 0 and store.pending_rewards() == 0
        assert store.labeled("churn", "stable").label.tolist() == ["yes"]
    finally:
        blocker.close()
        store.db.close()


def test_a_new_sqlite_database_and_its_directory_are_its_users_alone(tmp_path):
    """They hold every recorded input and label; the usual umask (022) left them readable by all."""
    usual = os.umask(0o022)
    try:
        database = SQLiteDatabase(tmp_path / "data" / "monitor.sqlite3", busy_timeout_s=1)
        database.run("CREATE TABLE t (x)")
        database.run("INSERT INTO t VALUES (1)")
    finally:
        os.umask(usual)
    directory = tmp_path / "data"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert files == dict.fromkeys(
        ["monitor.sqlite3", "monitor.sqlite3-wal", "monitor.sqlite3-shm"], 0o600
    )
    assert database.query("SELECT x FROM t") == [(1,)]
