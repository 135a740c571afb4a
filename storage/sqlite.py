"""The embedded engine: one SQLite file, shared by the processes of one machine.

A ``sqlite3`` connection must not be shared between threads, and the stores are called from the
event loop's worker threads, so each thread gets its own connection, opened once: autocommit
(transactions are explicit), WAL (readers never block the writer, and the workers of one machine
share the file), and a busy timeout (a statement waits that long for another process's lock).
Every write transaction is ``BEGIN IMMEDIATE``: one writer at a time, which is what the ``lock``
of ``Database.transaction`` asks for.

The files hold every recorded input, label and audit entry, so a new database's directory and file
are its user's alone (0700, 0600; SQLite gives its WAL and shared-memory files the file's mode),
whatever the umask: other users of the host cannot read them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from storage.database import Dialect, Params, StoreFull, StoreUnavailable

SQLITE = Dialect(
    name="sqlite",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    key_text="TEXT",
    now_s="((julianday('now') - 2440587.5) * 86400.0)",
    json_length="json_array_length({})",
    json_as_array="(CASE WHEN json_type({0}) = 'array' THEN {0} ELSE json_array(json({0})) END)",
    json_elements="json_each({0}) {1}",
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """SQLite's errors as the interface's."""
    try:
        yield
    except sqlite3.OperationalError as error:
        if "full" in str(error):
            raise StoreFull(f"{StoreFull.summary}: {error}") from None
        raise StoreUnavailable(f"{StoreUnavailable.summary}: {error}") from None


class _Session:
    dialect = SQLITE

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def query(self, sql: str, params: Params = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def run(self, sql: str, params: Params = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def run_many(self, sql: str, rows: Sequence[Params]) -> int:
        return self._db.executemany(sql, rows).rowcount if rows else 0

    def notify(self, channel: str, payload: str) -> None:
        """Nothing: SQLite's readers are on this machine and poll."""


class SQLiteDatabase:
    """One SQLite file, with a connection per thread."""

    dialect = SQLITE

    def __init__(self, path: Path, busy_timeout_s: float, pragmas: Sequence[str] = ()) -> None:
        """``pragmas``: extra settings each connection starts with, e.g. ``max_page_count=N``."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # empty: SQLite makes it a new database
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._pragmas = ("journal_mode=WAL", *pragmas)
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            with _translated():
                db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
                for pragma in self._pragmas:
                    db.execute(f"PRAGMA {pragma}")
            self._local.db = db
        return db

    def query(self, sql: str, params: Params = ()) -> list[tuple]:
        with _translated():
            return self._connection().execute(sql, params).fetchall()

    def run(self, sql: str, params: Params = ()) -> int:
        with self.transaction() as session:
            return session.run(sql, params)

    @contextlib.contextmanager
    def stream(self, sql: str, params: Params = ()) -> Iterator[Iterator[tuple]]:
        with _translated():
            cursor = self._connection().execute(sql, params)
            try:
                yield iter(cursor)
            finally:
                cursor.close()

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, lock: str | None = None) -> Iterator[_Session]:
        """``BEGIN IMMEDIATE`` (one writer at a time: every transaction holds the lock that
        ``lock`` asks for); ``durable``: synchronous=FULL, an fsync at commit."""
        db = self._connection()
        with _translated():
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _Session(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite has rolled back by itself on some errors
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
