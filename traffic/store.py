"""Shared routing state: one versioned document of every endpoint's table, plus the audit log;
each endpoint's rollout state (versioned the same way) with its log of evaluations; and the outbox
of events to announce (webhooks), written in the same transaction as the rollout state that
produced them, so a transition is announced even if the process dies right after deciding it.

Every worker and replica reads the same state; a change is a compare-and-swap on the version, so
two admins (or two workers starting at once) never overwrite each other silently. A saved version
is announced on ``ROUTING_CHANNEL`` (LISTEN/NOTIFY on PostgreSQL), so followers need not wait for
their next poll. Leases elect one holder of a role among processes on several machines (the
monitor's leader). ``StateStore`` is the interface; ``SQLStateStore`` implements it on either
engine of storage/: a SQLite file shared by the workers of one machine (the default), or
PostgreSQL shared by replicas on several.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.database import Database, Session
from storage.schema import Schema, upgrade
from storage.sqlite import SQLiteDatabase
from traffic.table import EndpointTable


class VersionConflict(RuntimeError):
    """The state changed since it was read; re-read and re-apply the change."""


@dataclass(frozen=True)
class RoutingState:
    """Every endpoint's table at one version; ``source`` is the hash of the config it came from."""

    version: int
    source: str
    tables: Mapping[str, EndpointTable]
    declared: Mapping[str, EndpointTable] | None = None
    """The tables that config declared, where known: what a reload or a start on an edited
    config compares it with, endpoint by endpoint (service/state.py ``from_config``). A state
    saved without them keeps those saved before, while its ``source`` is theirs."""

    def document(self) -> str:
        return _tables_document(self.tables)

    def changes(self, before: RoutingState) -> bool:
        """Whether saving this state over ``before`` changes anything a reader sees: its tables,
        its source, or (where this one has them) the declared tables. An unchanged state saved
        made a version that every worker and replica installed and an audit entry, for nothing:
        a reload of a file nobody edited (a config sync that reloads every minute), a weight set
        again."""
        return (
            self.source != before.source
            or _plain(self.tables) != _plain(before.tables)
            or (self.declared is not None and _plain(self.declared) != _plain(before.declared))
        )

    @classmethod
    def parse(
        cls, version: int, source: str, document: str, declared: str | None = None
    ) -> RoutingState:
        return cls(
            version, source, _parse_tables(document), _declared(declared) if declared else None
        )


def _plain(tables: Mapping[str, EndpointTable] | None) -> dict | None:
    return None if tables is None else {name: table.to_dict() for name, table in tables.items()}


def _tables_document(tables: Mapping[str, EndpointTable]) -> str:
    return json.dumps(_plain(tables))


def _parse_tables(document: str) -> dict[str, EndpointTable]:
    return {n: EndpointTable.from_dict(n, t) for n, t in json.loads(document).items()}


def _declared(document: str) -> dict[str, EndpointTable] | None:
    """The declared tables, or None where this version cannot read them (a newer one wrote
    fields it does not know): then every endpoint is taken as changed, the safe side."""
    try:
        return _parse_tables(document)
    except (TypeError, ValueError, KeyError):
        return None


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

    def save_readout(
        self, endpoint: str, state: Mapping, computed_at: float, readout: Mapping
    ) -> None: ...

    def load_readout(self, endpoint: str) -> tuple[dict, float, dict] | None: ...

    def save_rollout(
        self,
        endpoint: str,
        state: Mapping,
        expected_revision: int,
        events: Sequence[OutboxEvent] = (),
    ) -> int: ...

    def append_evaluation(self, endpoint: str, entry: Mapping) -> None: ...

    def due_events(self, now: float, limit: int = 100) -> list[OutboxEvent]: ...

    def event_attempted(
        self, event: OutboxEvent, status: str, outcome: str, next_at: float = 0.0
    ) -> None: ...

    def prune(
        self, audit_before: float, evaluations_before: float, events_before: float
    ) -> dict: ...

    def evaluations(self, endpoint: str, limit: int = 100) -> list[dict]: ...

    def raise_drift_alarm(
        self, endpoint: str, variant: str, model: str, events: Sequence[OutboxEvent]
    ) -> bool: ...

    def clear_drift_alarm(self, endpoint: str, variant: str) -> None: ...

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> int | None: ...

    def release_lease(self, name: str, holder: str) -> None: ...

    def lease(self, name: str) -> Lease | None: ...


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
    state needs no change, and may raise to refuse it (nothing is saved then); a result that
    changes nothing a reader sees (``RoutingState.changes``) is not saved either. The one place
    every writer of the routing state (workers at start, the admin API, rollouts) goes through.
    ``VersionConflict`` after ``CAS_ATTEMPTS`` tries."""
    for _ in range(CAS_ATTEMPTS):
        before = store.load()
        after = change(before)
        if after is None or (before is not None and not after.changes(before)):
            return Swap(before, None)
        try:
            return Swap(before, store.save(after, before.version if before else 0))
        except VersionConflict:
            continue
    raise VersionConflict(f"the routing state kept changing; gave up after {CAS_ATTEMPTS} tries")


SCHEMA = Schema(
    "routing",
    [
        """
CREATE TABLE IF NOT EXISTS routing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id {serial_key},
    at DOUBLE PRECISION NOT NULL,
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
    id {serial_key},
    endpoint TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_evaluations_by_endpoint ON rollout_evaluations (endpoint, id);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL,
    url TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    body TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    ready INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (id, url)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at) WHERE status = 'pending' AND ready = 1;
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
CREATE INDEX IF NOT EXISTS rollout_evaluations_by_time ON rollout_evaluations (at)
""",
        """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    term INTEGER NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
)
""",
        """
CREATE TABLE IF NOT EXISTS drift_alarms (
    endpoint TEXT NOT NULL,
    variant TEXT NOT NULL,
    model TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, variant)
)
""",
        """
CREATE TABLE IF NOT EXISTS routing_declared (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    source TEXT NOT NULL,
    document TEXT NOT NULL
)
""",
        """
CREATE TABLE IF NOT EXISTS experiment_readouts (
    endpoint TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    computed_at DOUBLE PRECISION NOT NULL,
    readout TEXT NOT NULL
)
""",
    ],
)
"""Version 1 is the layout from before schemas were versioned (``IF NOT EXISTS``: a file of that
time is adopted as it is); version 2 adds leases; version 3 the variants whose drift is past the
alarm; version 4 the tables the config of the routing's ``source`` declared; version 5 each
experiment's newest readout."""
ROUTING_CHANNEL = "gateway_routing"
"""Where a saved routing version is announced (``LISTEN/NOTIFY`` on PostgreSQL)."""
PRUNE_CHUNK = 5000
BUSY_TIMEOUT_S = 5.0
"""How long a SQLite statement waits for another process's lock before it fails (and is retried)."""


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease, in which term, and for how much longer (seconds; negative once
    it lapsed)."""

    holder: str
    term: int
    expires_in_s: float


class SQLStateStore:
    """The routing state store on a SQL database: a SQLite file shared by the workers of one
    machine (``open_sqlite``), or PostgreSQL shared by replicas on several."""

    def __init__(self, db: Database) -> None:
        self.db = db
        upgrade(db, SCHEMA)

    @classmethod
    def open_sqlite(cls, path: Path) -> SQLStateStore:
        return cls(SQLiteDatabase(path, BUSY_TIMEOUT_S))

    def current_version(self) -> int:
        rows = self.db.query("SELECT version FROM routing WHERE id = 1")
        return rows[0][0] if rows else 0

    def load(self) -> RoutingState | None:
        rows = self.db.query(
            "SELECT routing.version, routing.source, routing.document, declared.document "
            "FROM routing LEFT JOIN routing_declared AS declared "
            "ON declared.id = 1 AND declared.source = routing.source WHERE routing.id = 1"
        )
        return RoutingState.parse(*rows[0]) if rows else None

    def save(self, state: RoutingState, expected_version: int) -> RoutingState:
        """Store ``state`` as version ``expected_version + 1``; ``VersionConflict`` if it moved.
        Listeners of ``ROUTING_CHANNEL`` hear the new version when it commits."""
        new_version = expected_version + 1
        with self.db.transaction() as session:
            if expected_version == 0:
                changed = session.run(
                    "INSERT INTO routing (id, version, source, document) VALUES (1,?,?,?) "
                    "ON CONFLICT DO NOTHING",
                    (new_version, state.source, state.document()),
                )
            else:
                changed = session.run(
                    "UPDATE routing SET version = ?, source = ?, document = ? "
                    "WHERE id = 1 AND version = ?",
                    (new_version, state.source, state.document(), expected_version),
                )
            if changed != 1:
                raise VersionConflict(f"routing state is no longer at version {expected_version}")
            if state.declared is not None:
                session.run(
                    "INSERT INTO routing_declared (id, source, document) VALUES (1,?,?) "
                    "ON CONFLICT (id) DO UPDATE SET source = excluded.source, "
                    "document = excluded.document",
                    (state.source, _tables_document(state.declared)),
                )
            session.notify(ROUTING_CHANNEL, str(new_version))
        return RoutingState(new_version, state.source, state.tables, state.declared)

    def append_audit(self, entry: AuditEntry) -> None:
        self.db.run(
            "INSERT INTO audit (at, client, action, endpoint, detail) VALUES (?,?,?,?,?)",
            (entry.at, entry.client, entry.action, entry.endpoint, json.dumps(entry.detail)),
        )

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        rows = self.db.query(
            "SELECT at, client, action, endpoint, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [AuditEntry(at, c, a, e, json.loads(d)) for at, c, a, e, d in rows]

    def _load_versioned(self, table: str, endpoint: str) -> tuple[int, dict] | None:
        rows = self.db.query(f"SELECT revision, state FROM {table} WHERE endpoint = ?", (endpoint,))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    @staticmethod
    def _save_versioned(
        session: Session, table: str, endpoint: str, document: str, expected_revision: int
    ) -> None:
        """Write revision ``expected_revision + 1`` of an endpoint's row in ``table``, or raise
        ``VersionConflict`` when another writer moved it first."""
        if expected_revision == 0:
            changed = session.run(
                f"INSERT INTO {table} (endpoint, revision, state) VALUES (?,1,?) "
                "ON CONFLICT DO NOTHING",
                (endpoint, document),
            )
        else:
            changed = session.run(
                f"UPDATE {table} SET revision = revision + 1, state = ? "
                "WHERE endpoint = ? AND revision = ?",
                (document, endpoint, expected_revision),
            )
        if changed != 1:
            raise VersionConflict(f"{table} of {endpoint!r} is no longer at {expected_revision}")

    def load_experiment(self, endpoint: str) -> tuple[int, dict] | None:
        """(revision, state) of the endpoint's experiment, if it ever had one."""
        return self._load_versioned("experiments", endpoint)

    def save_experiment(self, endpoint: str, state: Mapping, expected_revision: int) -> int:
        """Store the experiment's state as the next revision; ``VersionConflict`` if another
        writer (another worker starting it at the same moment) got there first."""
        document = json.dumps(state, sort_keys=True)
        with self.db.transaction() as session:
            self._save_versioned(session, "experiments", endpoint, document, expected_revision)
        return expected_revision + 1

    def save_readout(
        self, endpoint: str, state: Mapping, computed_at: float, readout: Mapping
    ) -> None:
        """Keep ``readout``, computed at ``computed_at`` on the experiment's ``state``, as its
        newest, unless a newer one is kept already (every monitor reads the newest, a standby's
        first read included)."""
        self.db.run(
            "INSERT INTO experiment_readouts (endpoint, state, computed_at, readout) "
            "VALUES (?,?,?,?) ON CONFLICT (endpoint) DO UPDATE SET state = excluded.state, "
            "computed_at = excluded.computed_at, readout = excluded.readout "
            "WHERE experiment_readouts.computed_at <= excluded.computed_at",
            (endpoint, json.dumps(state, sort_keys=True), computed_at, json.dumps(readout)),
        )

    def load_readout(self, endpoint: str) -> tuple[dict, float, dict] | None:
        """(state, computed_at, readout) of the experiment's newest readout, if one was kept."""
        rows = self.db.query(
            "SELECT state, computed_at, readout FROM experiment_readouts WHERE endpoint = ?",
            (endpoint,),
        )
        return (json.loads(rows[0][0]), rows[0][1], json.loads(rows[0][2])) if rows else None

    def load_rollout(self, endpoint: str) -> tuple[int, dict] | None:
        """(revision, state) of the endpoint's rollout, if it ever had one."""
        return self._load_versioned("rollouts", endpoint)

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
        applied = bool(state.get("applied", True))
        with self.db.transaction() as session:
            self._save_versioned(
                session, "rollouts", endpoint, json.dumps(state), expected_revision
            )
            self._insert_events(session, events, applied)
            if applied:
                session.run(
                    "UPDATE outbox SET ready = 1 WHERE endpoint = ? AND ready = 0", (endpoint,)
                )
        return expected_revision + 1

    def append_evaluation(self, endpoint: str, entry: Mapping) -> None:
        self.db.run(
            "INSERT INTO rollout_evaluations (endpoint, at, entry) VALUES (?,?,?)",
            (endpoint, entry.get("at", time.time()), json.dumps(entry)),
        )

    @staticmethod
    def _insert_events(session: Session, events: Sequence[OutboxEvent], ready: bool) -> None:
        session.run_many(
            "INSERT INTO outbox (id, url, endpoint, body, created, ready) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            [(e.id, e.url, e.endpoint, e.body, time.time(), int(ready)) for e in events],
        )

    def due_events(self, now: float, limit: int = 100) -> list[OutboxEvent]:
        """Undelivered events whose next attempt is due, oldest first."""
        rows = self.db.query(
            "SELECT id, url, body, endpoint, attempts FROM outbox WHERE status = 'pending' "
            "AND ready = 1 AND next_at <= ? ORDER BY next_at, created LIMIT ?",
            (now, limit),
        )
        return [OutboxEvent(*row) for row in rows]

    def event_attempted(
        self, event: OutboxEvent, status: str, outcome: str, next_at: float = 0.0
    ) -> None:
        """Record one delivery attempt: ``status`` pending (retry at ``next_at``), delivered
        or failed (given up); ``outcome`` says what the receiver did."""
        self.db.run(
            "UPDATE outbox SET status = ?, outcome = ?, attempts = attempts + 1, next_at = ? "
            "WHERE id = ? AND url = ?",
            (status, outcome, next_at, event.id, event.url),
        )

    def events(self, limit: int = 100) -> list[dict]:
        """The newest outbox entries (for operators and tests)."""
        rows = self.db.query(
            "SELECT id, url, endpoint, status, attempts, outcome, ready, body FROM outbox "
            "ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        keys = ("id", "url", "endpoint", "status", "attempts", "outcome", "ready", "body")
        return [dict(zip(keys, row)) for row in rows]

    def prune(self, audit_before: float, evaluations_before: float, events_before: float) -> dict:
        """Delete audit entries, rollout evaluations and finished outbox events older than the
        given times, in chunks; returns how many of each went."""
        deleted = {}
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
                "DELETE FROM outbox WHERE (id, url) IN (SELECT id, url FROM outbox "
                "WHERE status != 'pending' AND created < ? LIMIT ?)",
                events_before,
            ),
        ):
            deleted[kind] = 0
            while True:
                removed = self.db.run(statement, (cutoff, PRUNE_CHUNK))
                deleted[kind] += removed
                if removed < PRUNE_CHUNK:
                    break
        return deleted

    def evaluations(self, endpoint: str, limit: int = 100) -> list[dict]:
        """The newest ``limit`` evaluations of the endpoint's rollouts, oldest first."""
        rows = self.db.query(
            "SELECT entry FROM rollout_evaluations WHERE endpoint = ? ORDER BY id DESC LIMIT ?",
            (endpoint, limit),
        )
        return [json.loads(entry) for (entry,) in reversed(rows)]

    def raise_drift_alarm(
        self, endpoint: str, variant: str, model: str, events: Sequence[OutboxEvent]
    ) -> bool:
        """Note that the drift of the variant's ``model`` went past the alarm, and keep its
        ``events``, in one transaction; False, and nothing kept, when it was past already
        (noted by this monitor before a restart, or by another that led). A new model in the
        variant (a rollout's next candidate) is a new alarm."""
        with self.db.transaction() as session:
            raised = session.query(
                "INSERT INTO drift_alarms (endpoint, variant, model, since) VALUES (?,?,?,?) "
                "ON CONFLICT (endpoint, variant) DO UPDATE SET model = excluded.model, "
                "since = excluded.since WHERE drift_alarms.model != excluded.model "
                "RETURNING since",
                (endpoint, variant, model, time.time()),
            )
            if raised:
                self._insert_events(session, events, ready=True)
        return bool(raised)

    def clear_drift_alarm(self, endpoint: str, variant: str) -> None:
        """The variant's drift is under the alarm (again)."""
        self.db.run(
            "DELETE FROM drift_alarms WHERE endpoint = ? AND variant = ?", (endpoint, variant)
        )

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        """Take the lease ``name`` for ``holder`` when it is free or lapsed, or renew it when
        ``holder`` has it: for ``ttl_s`` seconds of the database's clock (one clock for every
        machine). The term (a new one each time the lease changes hands), or None when another
        holder has it."""
        now = self.db.dialect.now_s
        with self.db.transaction() as session:
            rows = session.query(
                "INSERT INTO leases (name, holder, term, expires_at) "
                f"VALUES (?, ?, 1, {now} + ?) ON CONFLICT (name) DO UPDATE SET "
                "term = CASE WHEN leases.holder = excluded.holder THEN leases.term "
                "ELSE leases.term + 1 END, holder = excluded.holder, "
                "expires_at = excluded.expires_at "
                f"WHERE leases.holder = excluded.holder OR leases.expires_at < {now} RETURNING term",
                (name, holder, ttl_s),
            )
        return rows[0][0] if rows else None

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once (a clean shutdown), if ``holder`` has it."""
        self.db.run(
            "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?", (name, holder)
        )

    def lease(self, name: str) -> Lease | None:
        rows = self.db.query(
            f"SELECT holder, term, expires_at - {self.db.dialect.now_s} FROM leases WHERE name = ?",
            (name,),
        )
        return Lease(*rows[0]) if rows else None


def audit_entry(client: str, action: str, endpoint: str, detail: Mapping) -> AuditEntry:
    return AuditEntry(time.time(), client, action, endpoint, dict(detail))
