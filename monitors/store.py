"""The monitor's durable store: prediction records and ground-truth labels, joined by request id.

Labels may arrive before their prediction (kept, joined when it comes) or after; the same label
twice is accepted once (idempotent), a different label for the same id is a conflict. A label whose
prediction has not arrived within the retention window counts as unmatched. Every write commits
before it returns, so an acknowledged label survives a crash. SQLite, one file; the same shape maps
onto PostgreSQL for a monitor shared by several machines.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import msgspec
import pandas as pd

from monitors.records import PredictionRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    endpoint TEXT NOT NULL,
    variant TEXT NOT NULL,
    model TEXT NOT NULL,
    predictions TEXT NOT NULL,
    inputs TEXT,
    shadow TEXT NOT NULL,
    latency_s REAL NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_by_variant ON predictions (endpoint, variant, at);
CREATE TABLE IF NOT EXISTS labels (
    request_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""


RECORD_COLUMNS = {
    "request_id",
    "at",
    "endpoint",
    "variant",
    "model",
    "predictions",
    "inputs",
    "shadow",
    "latency_s",
    "outcome",
}


class LabelOutcome(str, Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


class MonitorStore:
    """Records and labels in one SQLite file (WAL); safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._local = threading.local()
        db = self._db()
        columns = {row[1] for row in db.execute("PRAGMA table_info(predictions)")}
        if columns and columns != RECORD_COLUMNS:  # an older layout: set it aside, keep labels
            db.execute(f"ALTER TABLE predictions RENAME TO predictions_before_{int(time.time())}")
            db.execute("DROP INDEX IF EXISTS predictions_by_variant")
        db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable``: its commit is on disk (fsync) before it returns,
        which labels need (acknowledged means kept). Records are telemetry: their commits survive
        a crash of the monitor but may be lost with the machine's power, and skip the fsync."""
        db = self._db()
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def add_records(self, records: Iterable[PredictionRecord]) -> int:
        """Store records (a record seen before is ignored); returns how many were new."""
        encode = msgspec.json.encode  # several times faster than json.dumps on these lists
        rows = [
            (
                r.request_id,
                r.at,
                r.endpoint,
                r.variant,
                r.model,
                encode(r.predictions),
                None if r.inputs is None else encode(r.inputs),
                encode(r.shadow),
                r.latency_s,
                r.outcome,
            )
            for r in records
        ]
        with self._transaction(durable=False) as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO predictions (request_id, at, endpoint, variant, model, "
                "predictions, inputs, shadow, latency_s, outcome) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return db.total_changes - before

    def add_label(self, request_id: str, label: object) -> LabelOutcome:
        """Store a label durably; the same label again is a duplicate, another one a conflict."""
        return self.add_labels([(request_id, label)])[0]

    def add_labels(self, labels: Iterable[tuple[str, object]]) -> list[LabelOutcome]:
        """Store many labels in one durable transaction (one fsync, however many): each
        outcome as for ``add_label``; all or none are stored."""
        outcomes, now = [], time.time()
        with self._transaction(durable=True) as db:
            for request_id, label in labels:
                text = json.dumps(label, sort_keys=True)
                row = db.execute(
                    "SELECT label FROM labels WHERE request_id = ?", (request_id,)
                ).fetchone()
                if row is None:
                    db.execute("INSERT INTO labels VALUES (?,?,?)", (request_id, text, now))
                    outcomes.append(LabelOutcome.STORED)
                else:
                    same = row[0] == text
                    outcomes.append(LabelOutcome.DUPLICATE if same else LabelOutcome.CONFLICT)
        return outcomes

    def labeled(self, endpoint: str, variant: str, since: float = 0.0) -> pd.DataFrame:
        """One row per labeled prediction row: request id, time, prediction, label."""
        rows = (
            self._db()
            .execute(
                "SELECT p.request_id, p.at, p.predictions, l.label FROM predictions p "
                "JOIN labels l ON l.request_id = p.request_id "
                "WHERE p.endpoint = ? AND p.variant = ? AND p.at >= ? ORDER BY p.at",
                (endpoint, variant, since),
            )
            .fetchall()
        )
        table = []
        for request_id, at, predictions, label in rows:
            predictions = json.loads(predictions)
            labels = _row_labels(label, len(predictions))
            if labels is not None:
                table += [(request_id, at, p, y) for p, y in zip(predictions, labels)]
        return pd.DataFrame(table, columns=["request_id", "at", "prediction", "label"])

    def shadowed(self, endpoint: str, variant: str, since: float = 0.0) -> pd.DataFrame:
        """One row per row a shadow mirrored from this variant: request id, shadow, the primary's
        prediction, the shadow's, and the label (None until one joins)."""
        rows = (
            self._db()
            .execute(
                "SELECT p.request_id, p.predictions, p.shadow, l.label FROM predictions p "
                "LEFT JOIN labels l ON l.request_id = p.request_id "
                "WHERE p.endpoint = ? AND p.variant = ? AND p.at >= ? AND p.shadow != '{}' "
                "ORDER BY p.at",
                (endpoint, variant, since),
            )
            .fetchall()
        )
        table = []
        for request_id, predictions, shadows, label in rows:
            predictions = json.loads(predictions)
            labels = _row_labels(label, len(predictions)) or [None] * len(predictions)
            for shadow, theirs in json.loads(shadows).items():
                if len(theirs) == len(predictions):
                    table += [
                        (request_id, shadow, p, s, y)
                        for p, s, y in zip(predictions, theirs, labels)
                    ]
        columns = ["request_id", "shadow", "prediction", "shadow_prediction", "label"]
        return pd.DataFrame(table, columns=columns)

    def outcomes(
        self, endpoint: str, variant: str, since: float, slow_s: float
    ) -> tuple[int, int, int, int]:
        """(requests, failed, slow, invalid) a variant recorded since ``since``: failed means not
        answered (an error or a rejection), slow means answered after more than ``slow_s``,
        invalid means answered with a NaN or infinite prediction (recorded as null)."""
        row = (
            self._db()
            .execute(
                "SELECT COUNT(*), TOTAL(outcome != 'ok'), TOTAL(outcome = 'ok' AND latency_s > ?), "
                "TOTAL(outcome = 'ok' AND instr(predictions, 'null') > 0) FROM predictions "
                "WHERE endpoint = ? AND variant = ? AND at >= ?",
                (slow_s, endpoint, variant, since),
            )
            .fetchone()
        )
        return tuple(int(v) for v in row)

    def latencies(self, endpoint: str, variant: str, since: float) -> list[float]:
        """Latencies (seconds) of the requests a variant answered since ``since``."""
        rows = (
            self._db()
            .execute(
                "SELECT latency_s FROM predictions WHERE endpoint = ? AND variant = ? AND at >= ? "
                "AND outcome = 'ok'",
                (endpoint, variant, since),
            )
            .fetchall()
        )
        return [latency for (latency,) in rows]

    def active(self, since: float) -> list[tuple[str, str, str]]:
        """(endpoint, variant, model) that recorded predictions since ``since``."""
        return (
            self._db()
            .execute(
                "SELECT DISTINCT endpoint, variant, model FROM predictions WHERE at >= ? "
                "ORDER BY endpoint, variant, model",
                (since,),
            )
            .fetchall()
        )

    def newest(self) -> float | None:
        """Time of the newest record, if any."""
        return self._db().execute("SELECT MAX(at) FROM predictions").fetchone()[0]

    def counts(self) -> list[dict]:
        """Records and labeled records per endpoint and variant."""
        rows = (
            self._db()
            .execute(
                "SELECT p.endpoint, p.variant, COUNT(*), COUNT(l.request_id) FROM predictions p "
                "LEFT JOIN labels l ON l.request_id = p.request_id GROUP BY p.endpoint, p.variant"
            )
            .fetchall()
        )
        return [
            {"endpoint": e, "variant": v, "records": n, "labeled": labeled}
            for e, v, n, labeled in rows
        ]

    def unmatched_labels(self, older_than_s: float, now: float | None = None) -> int:
        """Labels received more than ``older_than_s`` ago whose prediction never arrived."""
        cutoff = (now or time.time()) - older_than_s
        (count,) = (
            self._db()
            .execute(
                "SELECT COUNT(*) FROM labels l LEFT JOIN predictions p ON p.request_id = l.request_id "
                "WHERE p.request_id IS NULL AND l.received_at < ?",
                (cutoff,),
            )
            .fetchone()
        )
        return count

    def window(
        self, endpoint: str, variant: str, max_rows: int, since: float = 0.0
    ) -> pd.DataFrame:
        """The newest recorded input rows (with their predictions) of a variant, oldest first."""
        rows = (
            self._db()
            .execute(
                "SELECT inputs, predictions FROM predictions WHERE endpoint = ? AND variant = ? "
                "AND at >= ? AND inputs IS NOT NULL ORDER BY at DESC LIMIT ?",
                (endpoint, variant, since, max_rows),
            )
            .fetchall()
        )
        inputs, predictions = [], []
        for raw_inputs, raw_predictions in reversed(rows):
            inputs += json.loads(raw_inputs)
            predictions += json.loads(raw_predictions)
        frame = pd.DataFrame(inputs)
        frame["prediction"] = predictions[: len(frame)]
        return frame.tail(max_rows).reset_index(drop=True)


def _row_labels(label: str | None, rows: int) -> list | None:
    """A stored label as one label per row; None when there is none or it does not fit the rows
    (a label that does not fit the request's rows cannot be joined)."""
    if label is None:
        return None
    value = json.loads(label)
    labels = value if isinstance(value, list) else [value]
    return labels if len(labels) == rows else None
