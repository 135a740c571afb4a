"""Opening a SQLite file the way every store of the project needs it.

A ``sqlite3`` connection must not be shared between threads, and the stores are called from the
event loop's worker threads, so each thread gets its own connection, opened once: autocommit
(transactions are explicit), WAL (readers never block the writer, and the workers of one machine
share the file), and a busy timeout (a statement waits that long for another process's lock).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path


class SQLiteFile:
    """One SQLite file, with a connection per thread."""

    def __init__(self, path: Path, busy_timeout_s: float, pragmas: Sequence[str] = ()) -> None:
        """``pragmas``: extra settings each connection starts with, e.g. ``synchronous=FULL``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._pragmas = ("journal_mode=WAL", *pragmas)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            for pragma in self._pragmas:
                db.execute(f"PRAGMA {pragma}")
            self._local.db = db
        return db
