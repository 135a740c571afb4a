"""Shared routing state: one versioned document of every endpoint's table, plus the audit log.

Every worker and replica reads the same state; a change is a compare-and-swap on the version, so
two admins (or two workers starting at once) never overwrite each other silently. ``StateStore`` is
the interface; ``SQLiteStateStore`` the embedded default (one file in the data directory, WAL mode,
shared by the workers of one machine). For replicas on several machines the same interface sits on
PostgreSQL (a ``routing`` row updated with ``WHERE version = %s``, LISTEN/NOTIFY to wake pollers) or
Redis (WATCH/MULTI on a hash, a pub/sub channel): see docs/architecture.md.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from traffic.table import EndpointTable


class VersionConflict(RuntimeError):
    """The state changed since it was read; re-read and re-apply the change."""


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
"""


class SQLiteStateStore:
    """The embedded store: a SQLite file shared by the workers of one machine."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._local = threading.local()
        with self._connection() as db:
            db.executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

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


def audit_entry(client: str, action: str, endpoint: str, detail: Mapping) -> AuditEntry:
    return AuditEntry(time.time(), client, action, endpoint, dict(detail))
