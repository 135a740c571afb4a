"""Shared routing state: one versioned document of every endpoint's table, plus the audit log;
each endpoint's rollout state (versioned the same way) with its log of evaluations; and the outbox
of events to announce (webhooks), written in the same transaction as the rollout state that
produced them, so a transition is announced even if the process dies right after deciding it.

Every worker and replica reads the same state; a change is a compare-and-swap on the version, so
two admins (or two workers starting at once) never overwrite each other silently. ``StateStore`` is
the interface; ``SQLiteStateStore`` the embedded default (one file in the data directory, WAL mode,
shared by the workers of one machine). For replicas on several machines the same interface sits on
PostgreSQL (a ``routing`` row updated with ``WHERE version = %s``, LISTEN/NOTIFY to wake pollers) or
Redis (WATCH/MULTI on a hash, a pub/sub channel): see docs/architecture.md.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.sqlite import SQLiteFile
from traffic.table import EndpointTable


class VersionConflict(RuntimeError):
    """The state changed since it was read; re-read and re-apply the change."""


class StoreUnavailable(RuntimeError):
    """The store cannot be read or written now (another process holds its lock for longer than
    ``BUSY_TIMEOUT_S``, its disk is full): nothing was changed; try again later."""


def _unavailable_on_database_errors(cls: type) -> type:
    """Every public method of ``cls`` raises ``StoreUnavailable`` where SQLite raises an
    ``OperationalError``, so callers handle the interface's error, not the engine's."""

    def translated(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except sqlite3.OperationalError as error:
                raise StoreUnavailable(f"the routing state store is unavailable: {error}") from None

        return call

    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("_"):
            setattr(cls, name, translated(member))
    return cls


@dataclass(frozen=True)
class RoutingState:
    """Every endpoint's table at one version; ``source`` is the hash of the config it came from."""

    version: int
    source: str
    tables: Mapping[str, EndpointTable]

    def document(self) -> str:
        return json.dumps({name: table.to_dict() for name, table in self.tables.items()})

    @classmethod
    def parse(cls, version: int, source: str, document: str) -> RoutingState:
        data = json.loads(document)
        return cls(version, source, {n: EndpointTable.from_dict(n, t) for n, t in data.items()})


@dataclass(frozen=True)
class OutboxEvent:
    """An event to deliver to one URL; ``body`` is the JSON document (its ``id`` included)."""

    id: str
    url: str
    body: str
    endpoint: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class AuditEntry:
    """One change: when, who (client address), what, and its details."""

    at: float
    client: str
    action: str
    endpoint: str
    detail: Mapping


class StateStore(Protocol):
    def current_version(self) -> int: ...

    def load(self) -> RoutingState | None: ...

    def save(self, state: RoutingState, expected_version: int) -> RoutingState: ...

    def append_audit(self, entry: AuditEntry) -> None: ...

    def audit(self, limit: int = 100) -> list[AuditEntry]: ...

    def load_rollout(self, endpoint: str) -> tuple[int, dict] | None: ...

    def load_experiment(self, endpoint: str) -> tuple[int, dict] | None: ...

    def save_experiment(self, endpoint: str, state: Mapping, expected_revision: int) -> int: ...

    def save_rollout(
        self,
        endpoint: str,
        state: Mapping,
        expected_revision: int,
        events: Sequence[OutboxEvent] = (),
    ) -> int: ...

    def append_evaluation(self, endpoint: str, entry: Mapping) -> None: ...

    def add_events(self, events: Sequence[OutboxEvent]) -> None: ...

    def due_events(self, now: float, limit: int = 100) -> list[OutboxEvent]: ...

    def event_attempted(
        self, event: OutboxEvent, status: str, outcome: str, next_at: float = 0.0
    ) -> None: ...

    def prune(
        self, audit_before: float, evaluations_before: float, events_before: float
    ) -> dict: ...

    def evaluations(self, endpoint: str, limit: int = 100) -> list[dict]: ...


CAS_ATTEMPTS = 10
"""How often a change is re-applied to a state that other writers keep moving before giving up."""


@dataclass(frozen=True)
class Swap:
    """What a compare-and-swap read, and what it saved (None: the change needed nothing)."""

    before: RoutingState | None
    after: RoutingState | None


def compare_and_swap(
    store: StateStore, change: Callable[[RoutingState | None], RoutingState | None]
) -> Swap:
    """Apply ``change`` to the stored routing state and save its result on the version it read;
    when another writer got there first, re-read and re-apply. ``change`` returns None when the
    state needs no change, and may raise to refuse it (nothing is saved then). The one place
    every writer of the routing state (workers at start, the admin API, rollouts) goes through.
    ``VersionConflict`` after ``CAS_ATTEMPTS`` tries."""
    for _ in range(CAS_ATTEMPTS):
        before = store.load()
        after = change(before)
        if after is None:
            return Swap(before, None)
        try:
            return Swap(before, store.save(after, before.version if before else 0))
        except VersionConflict:
            continue
    raise VersionConflict(f"the routing state kept changing; gave up after {CAS_ATTEMPTS} tries")


SCHEMA = """
CREATE TABLE IF NOT EXISTS routing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    endpoint TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    endpoint TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    at REAL NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_evaluations_by_endpoint ON rollout_evaluations (endpoint, id);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL,
    url TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    ready INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (id, url)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at) WHERE status = 'pending' AND ready = 1;
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
CREATE INDEX IF NOT EXISTS rollout_evaluations_by_time ON rollout_evaluations (at);
"""
PRUNE_CHUNK = 5000
BUSY_TIMEOUT_S = 5.0
"""How long a statement waits for another process's lock before it fails (and is retried)."""


@_unavailable_on_database_errors
class SQLiteStateStore:
    """The embedded store: a SQLite file shared by the workers of one machine."""

    def __init__(self, path: Path) -> None:
        self._file = SQLiteFile(path, BUSY_TIMEOUT_S, ["synchronous=FULL"])
        self._file.connection().executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        return self._file.connection()

    def current_version(self) -> int:
        row = self._connection().execute("SELECT version FROM routing WHERE id = 1").fetchone()
        return row[0] if row else 0

    def load(self) -> RoutingState | None:
        row = (
            self._connection()
            .execute("SELECT version, source, document FROM routing WHERE id = 1")
            .fetchone()
        )
        return RoutingState.parse(*row) if row else None

    def save(self, state: RoutingState, expected_version: int) -> RoutingState:
        """Store ``state`` as version ``expected_version + 1``; ``VersionConflict`` if it moved."""
        db = self._connection()
        new_version = expected_version + 1
        db.execute("BEGIN IMMEDIATE")
        try:
            if expected_version == 0:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO routing (id, version, source, document) VALUES (1,?,?,?)",
                    (new_version, state.source, state.document()),
                )
            else:
                cursor = db.execute(
                    "UPDATE routing SET version = ?, source = ?, document = ? "
                    "WHERE id = 1 AND version = ?",
                    (new_version, state.source, state.document(), expected_version),
                )
            if cursor.rowcount != 1:
                raise VersionConflict(f"routing state is no longer at version {expected_version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return RoutingState(new_version, state.source, state.tables)

    def append_audit(self, entry: AuditEntry) -> None:
        self._connection().execute(
            "INSERT INTO audit (at, client, action, endpoint, detail) VALUES (?,?,?,?,?)",
            (entry.at, entry.client, entry.action, entry.endpoint, json.dumps(entry.detail)),
        )

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        rows = (
            self._connection()
            .execute(
                "SELECT at, client, action, endpoint, detail FROM audit ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [AuditEntry(at, c, a, e, json.loads(d)) for at, c, a, e, d in rows]

    def load_experiment(self, endpoint: str) -> tuple[int, dict] | None:
        """(revision, state) of the endpoint's experiment, if it ever had one."""
        row = (
            self._connection()
            .execute("SELECT revision, state FROM experiments WHERE endpoint = ?", (endpoint,))
            .fetchone()
        )
        return (row[0], json.loads(row[1])) if row else None

    def save_experiment(self, endpoint: str, state: Mapping, expected_revision: int) -> int:
        """Store the experiment's state as the next revision; ``VersionConflict`` if another
        writer (another worker starting it at the same moment) got there first."""
        db = self._connection()
        document = json.dumps(state, sort_keys=True)
        revision = expected_revision + 1
        if expected_revision == 0:
            cursor = db.execute(
                "INSERT OR IGNORE INTO experiments (endpoint, revision, state) VALUES (?,?,?)",
                (endpoint, revision, document),
            )
        else:
            cursor = db.execute(
                "UPDATE experiments SET revision = ?, state = ? WHERE endpoint = ? AND revision = ?",
                (revision, document, endpoint, expected_revision),
            )
        if cursor.rowcount != 1:
            raise VersionConflict(f"the experiment of {endpoint} changed meanwhile")
        return revision

    def load_rollout(self, endpoint: str) -> tuple[int, dict] | None:
        """(revision, state) of the endpoint's rollout, if it ever had one."""
        row = (
            self._connection()
            .execute("SELECT revision, state FROM rollouts WHERE endpoint = ?", (endpoint,))
            .fetchone()
        )
        return (row[0], json.loads(row[1])) if row else None

    def save_rollout(
        self,
        endpoint: str,
        state: Mapping,
        expected_revision: int,
        events: Sequence[OutboxEvent] = (),
    ) -> int:
        """Store the rollout's state as the next revision; ``VersionConflict`` if it moved (a
        second writer), so that one decision is never overwritten by another made on old state.

        ``events`` go into the outbox in the same transaction. They are delivered once the state
        is applied (``state["applied"]``): saving an applied state releases every event of the
        endpoint still held, so a transition decided before a crash is announced after it."""
        db = self._connection()
        document = json.dumps(state)
        applied = bool(state.get("applied", True))
        db.execute("BEGIN IMMEDIATE")
        try:
            if expected_revision == 0:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO rollouts (endpoint, revision, state) VALUES (?,1,?)",
                    (endpoint, document),
                )
            else:
                cursor = db.execute(
                    "UPDATE rollouts SET revision = revision + 1, state = ? "
                    "WHERE endpoint = ? AND revision = ?",
                    (document, endpoint, expected_revision),
                )
            if cursor.rowcount != 1:
                raise VersionConflict(
                    f"rollout of {endpoint!r} is no longer at {expected_revision}"
                )
            self._insert_events(db, events, applied)
            if applied:
                db.execute(
                    "UPDATE outbox SET ready = 1 WHERE endpoint = ? AND ready = 0", (endpoint,)
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return expected_revision + 1

    def append_evaluation(self, endpoint: str, entry: Mapping) -> None:
        self._connection().execute(
            "INSERT INTO rollout_evaluations (endpoint, at, entry) VALUES (?,?,?)",
            (endpoint, entry.get("at", time.time()), json.dumps(entry)),
        )

    @staticmethod
    def _insert_events(db: sqlite3.Connection, events: Sequence[OutboxEvent], ready: bool) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO outbox (id, url, endpoint, body, created, ready) "
            "VALUES (?,?,?,?,?,?)",
            [(e.id, e.url, e.endpoint, e.body, time.time(), int(ready)) for e in events],
        )

    def add_events(self, events: Sequence[OutboxEvent]) -> None:
        """Events with no state behind them (drift), ready to deliver at once."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._insert_events(db, events, ready=True)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def due_events(self, now: float, limit: int = 100) -> list[OutboxEvent]:
        """Undelivered events whose next attempt is due, oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT id, url, body, endpoint, attempts FROM outbox WHERE status = 'pending' "
                "AND ready = 1 AND next_at <= ? ORDER BY next_at, created LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [OutboxEvent(*row) for row in rows]

    def event_attempted(
        self, event: OutboxEvent, status: str, outcome: str, next_at: float = 0.0
    ) -> None:
        """Record one delivery attempt: ``status`` pending (retry at ``next_at``), delivered
        or failed (given up); ``outcome`` says what the receiver did."""
        self._connection().execute(
            "UPDATE outbox SET status = ?, outcome = ?, attempts = attempts + 1, next_at = ? "
            "WHERE id = ? AND url = ?",
            (status, outcome, next_at, event.id, event.url),
        )

    def events(self, limit: int = 100) -> list[dict]:
        """The newest outbox entries (for operators and tests)."""
        rows = (
            self._connection()
            .execute(
                "SELECT id, url, endpoint, status, attempts, outcome, ready, body FROM outbox "
                "ORDER BY created DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        keys = ("id", "url", "endpoint", "status", "attempts", "outcome", "ready", "body")
        return [dict(zip(keys, row)) for row in rows]

    def prune(self, audit_before: float, evaluations_before: float, events_before: float) -> dict:
        """Delete audit entries, rollout evaluations and finished outbox events older than the
        given times, in chunks; returns how many of each went."""
        deleted = {}
        db = self._connection()
        for kind, statement, cutoff in (
            (
                "audit",
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? LIMIT ?)",
                audit_before,
            ),
            (
                "evaluations",
                "DELETE FROM rollout_evaluations WHERE id IN "
                "(SELECT id FROM rollout_evaluations WHERE at < ? LIMIT ?)",
                evaluations_before,
            ),
            (
                "events",
                "DELETE FROM outbox WHERE rowid IN (SELECT rowid FROM outbox "
                "WHERE status != 'pending' AND created < ? LIMIT ?)",
                events_before,
            ),
        ):
            deleted[kind] = 0
            while True:
                removed = db.execute(statement, (cutoff, PRUNE_CHUNK)).rowcount
                deleted[kind] += removed
                if removed < PRUNE_CHUNK:
                    break
        return deleted

    def evaluations(self, endpoint: str, limit: int = 100) -> list[dict]:
        """The newest ``limit`` evaluations of the endpoint's rollouts, oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT entry FROM rollout_evaluations WHERE endpoint = ? ORDER BY id DESC LIMIT ?",
                (endpoint, limit),
            )
            .fetchall()
        )
        return [json.loads(entry) for (entry,) in reversed(rows)]


def audit_entry(client: str, action: str, endpoint: str, detail: Mapping) -> AuditEntry:
    return AuditEntry(time.time(), client, action, endpoint, dict(detail))
