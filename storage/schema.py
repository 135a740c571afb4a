"""Schemas created and migrated by the gateway itself: each store lists its migrations in order,
and ``upgrade`` applies the ones a database has not had yet, recording each in a version table
(``schema_versions``: one row per store). Every process runs it at start (``gateway db upgrade``
runs it alone); processes starting together take turns on a lock, so a migration runs once.

A migration is SQL text (statements separated by ``;``) with the dialect's fragments as
``{serial_key}`` and ``{key_text}``; each runs in one transaction with its version bump (both
engines roll DDL back), so a crash mid-migration leaves the previous version, not half of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.database import Database

VERSIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""


@dataclass(frozen=True)
class Schema:
    """One store's tables: ``migrations[i]`` takes the schema from version ``i`` to ``i + 1``."""

    component: str
    migrations: Sequence[str]

    @property
    def version(self) -> int:
        return len(self.migrations)


SCHEMA_LOCK = "schema"
"""Every schema change takes this lock: processes starting together (on several machines) create
the version table and migrate one at a time (PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not
safe to race)."""


def installed_version(db: Database, component: str) -> int:
    """The version a database's schema of ``component`` is at (0: none yet)."""
    with db.transaction(lock=SCHEMA_LOCK) as session:
        session.run(VERSIONS_TABLE)
        rows = session.query(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        )
    return rows[0][0] if rows else 0


def upgrade(db: Database, schema: Schema) -> int:
    """Apply the migrations ``db`` has not had; the version it is at afterwards. A database
    newer than this code (a newer release wrote it) is refused rather than guessed at."""
    fragments = {"serial_key": db.dialect.serial_key, "key_text": db.dialect.key_text}
    while True:
        with db.transaction(lock=SCHEMA_LOCK) as session:
            session.run(VERSIONS_TABLE)
            rows = session.query(
                "SELECT version FROM schema_versions WHERE component = ?", (schema.component,)
            )
            version = rows[0][0] if rows else 0
            if version > schema.version:
                raise RuntimeError(
                    f"the {schema.component} schema is at version {version}, newer than this "
                    f"release's {schema.version}: run the newer release (or restore a backup)"
                )
            if version == schema.version:
                return version
            for statement in schema.migrations[version].format(**fragments).split(";"):
                if statement.strip():
                    session.run(statement)
            session.run(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (schema.component, version + 1),
            )
