"""The one interface the stores of traffic/ and monitors/ write SQL against, whichever engine is
underneath: SQLite (storage/sqlite.py: one file, the zero-setup default) or PostgreSQL
(storage/postgres.py: shared by replicas on several machines).

The stores write one SQL text for both engines, with ``?`` placeholders; the few things the two
spell differently (an auto-numbered key, JSON arrays, the database's clock) come from the
``Dialect``. Engine errors never leave this layer: a database that cannot be reached, is locked
for too long or has gone away raises ``StoreUnavailable``, one that is full ``StoreFull``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

Params = Sequence[Any]


class StoreUnavailable(RuntimeError):
    """The database cannot be read or written now (unreachable, locked by another process for
    too long, restarting): nothing was changed; try again later."""

    summary = "the database is unavailable"
    """What a caller is told. The message adds the driver's words, for the log alone: they name
    the database's host, port and user, which a caller of ``/feedback`` has no business knowing."""


class StoreFull(RuntimeError):
    """The write did not fit (the disk or the configured cap is full); nothing was written."""

    summary = "the database is full"
    """What a caller is told (the message adds the driver's words, for the log)."""


@dataclass(frozen=True)
class Dialect:
    """What the two engines spell differently, as SQL fragments."""

    name: str
    serial_key: str
    """An auto-numbered integer primary key column."""
    key_text: str
    """A text column compared byte by byte (ids are range-scanned by prefix)."""
    now_s: str
    """The database's clock in seconds since the epoch (one clock for every machine)."""
    json_length: str
    """``{}``: the number of elements of the JSON array stored as text in ``{}``."""
    json_as_array: str
    """``{}``: the JSON value stored as text in ``{}``, wrapped in an array unless it is one."""
    json_elements: str
    """``{0}`` the JSON array expression, ``{1}`` an alias: a join source of (key, value) rows,
    value as text; joined ``ON`` a condition."""


class Session(Protocol):
    """A connection inside one transaction."""

    dialect: Dialect

    def query(self, sql: str, params: Params = ()) -> list[tuple]: ...

    def run(self, sql: str, params: Params = ()) -> int:
        """Execute one statement; the number of rows it changed."""
        ...

    def run_many(self, sql: str, rows: Sequence[Params]) -> int:
        """Execute one statement per row; the number of rows changed in all."""
        ...

    def notify(self, channel: str, payload: str) -> None:
        """Tell listeners of ``channel`` once the transaction commits (nothing on SQLite, whose
        readers share the machine and poll)."""
        ...


class Database(Protocol):
    """One database, safe to use from several threads."""

    dialect: Dialect

    def query(self, sql: str, params: Params = ()) -> list[tuple]:
        """The rows of one read (its own transaction)."""
        ...

    def run(self, sql: str, params: Params = ()) -> int:
        """One write in its own durable transaction; the number of rows it changed."""
        ...

    def stream(self, sql: str, params: Params = ()) -> AbstractContextManager[Iterator[tuple]]:
        """The rows of one read, fetched as they are iterated (a caller that stops early never
        loads the rest)."""
        ...

    def transaction(
        self, durable: bool = True, lock: str | None = None
    ) -> AbstractContextManager[Session]:
        """One transaction, committed when the block ends and rolled back when it raises.
        ``durable``: on disk before the block returns (labels need it; records are telemetry and
        may skip it). ``lock``: transactions naming the same lock run one at a time, on every
        machine, so a read-then-write decision is never made twice concurrently."""
        ...

    def close(self) -> None: ...
