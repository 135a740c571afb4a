"""The monitor's durable store: prediction records, ground-truth labels and business rewards
(an experiment's outcomes, one value per request and metric), joined by request id.

Labels may arrive before their prediction (held as pending: bounded in number by the caller and
expired by ``prune``, joined when the prediction comes) or after; the same label twice is accepted
once (idempotent), a different label for the same id is a conflict. Every label write is on disk
(fsync) before it returns, so an acknowledged label survives a crash; a write that does not fit
(a full disk, or the configured size cap) changes nothing and raises ``StoreFull``. Rewards follow
the same rules, and are refused as late past their experiment's join window. Reads are
bounded in rows, so a window or a join never loads more than asked however big requests were.
SQLite, one file; the same shape maps onto PostgreSQL for a monitor shared by several machines.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np
import pandas as pd

from monitors.records import PredictionRecord
from storage.database import Database, Dialect, Session
from storage.schema import Schema, installed_version, upgrade
from storage.sqlite import SQLiteDatabase

_decode_stored = msgspec.json.Decoder().decode
"""Decodes the JSON that ``add_records`` wrote (msgspec's encoding, NaN and infinity as null):
several times faster than ``json.loads``, which was most of a monitor run's CPU on a full window."""

SCHEMA = Schema(
    "monitor",
    [
        """
CREATE TABLE IF NOT EXISTS predictions (
    request_id {key_text} PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    endpoint TEXT NOT NULL,
    variant TEXT NOT NULL,
    model TEXT NOT NULL,
    predictions TEXT NOT NULL,
    inputs TEXT,
    shadow TEXT NOT NULL,
    latency_s DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    correlation_id TEXT,
    pinned INTEGER NOT NULL DEFAULT 0,
    unit {key_text}
);
CREATE INDEX IF NOT EXISTS predictions_by_variant ON predictions (endpoint, variant, at);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (at);
CREATE TABLE IF NOT EXISTS labels (
    request_id {key_text} PRIMARY KEY,
    label TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS labels_pending ON labels (received_at) WHERE pending = 1;
CREATE TABLE IF NOT EXISTS rewards (
    request_id {key_text} NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, metric)
);
CREATE INDEX IF NOT EXISTS rewards_pending ON rewards (received_at) WHERE pending = 1
""",
        """
CREATE INDEX predictions_with_shadows ON predictions (endpoint, variant, at)
    WHERE shadow != '{{}}';
CREATE TABLE variant_models (
    endpoint TEXT NOT NULL,
    variant TEXT NOT NULL,
    model TEXT NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, variant, model)
);
INSERT INTO variant_models (endpoint, variant, model, last_at)
    SELECT endpoint, variant, model, MAX(at) FROM predictions GROUP BY endpoint, variant, model
""",
        """
ALTER TABLE predictions ADD COLUMN labeled INTEGER NOT NULL DEFAULT 0;
UPDATE predictions SET labeled = 1 WHERE request_id IN (SELECT request_id FROM labels);
CREATE INDEX predictions_labeled ON predictions (endpoint, variant, at) WHERE labeled = 1
""",
        """
CREATE INDEX predictions_with_inputs ON predictions (endpoint, variant, at) WHERE inputs IS NOT NULL
""",
    ],
)
"""Version 1 is the layout from before schemas were versioned (``IF NOT EXISTS``: a file of that
time is adopted once ``_adopt_unversioned_sqlite`` brought its columns up to it). Version 2 lets a
run find what it reads without scanning every record of the last ``window_s``: an index of the
requests a shadow mirrored, and each variant's models with their newest record (a run took 1 s
of CPU with 500,000 records stored, most of it in those two scans). Version 3 marks the records a
label joined (``labeled``, set wherever a label meets its record) and indexes them, for the same
reason: the labeled rows' join read every record of the window (0.73 s of a 1.3 s run with
1,500,000 records stored). Version 4 indexes the records that kept their inputs, for the window:
under load the gateway keeps the inputs of a sample only (``input_rows_per_s``,
``sample_inputs``), and the window's read stepped through every record to find them (10,000 rows
sampled 1 in 50 took 205 ms to read, 84 ms by the index)."""

RECORD_COLUMNS = (
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
    "correlation_id",
    "pinned",
    "unit",
)
ADDED_COLUMNS = {
    "predictions": {
        "correlation_id": "TEXT",
        "pinned": "INTEGER NOT NULL DEFAULT 0",
        "unit": "TEXT",
    },
    "labels": {"pending": "INTEGER NOT NULL DEFAULT 0"},
}
"""Columns added in place to SQLite files older than versioned schemas."""
PAGE_BYTES = 4096
BUSY_TIMEOUT_S = 10.0
"""How long a statement waits for another thread's write lock before it fails."""
PRUNE_CHUNK = 5000
"""Rows deleted per transaction when pruning, so ingestion never waits long behind it."""
_ANY_WAITING = {t: f"SELECT 1 FROM {t} WHERE pending = 1 LIMIT 1" for t in ("labels", "rewards")}
"""SQL: whether any label (reward) waits for its record (by the index of waiting rows)."""


class LabelOutcome(str, Enum):
    """What became of one label, or one reward, sent to the store."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    """The same value was stored before: nothing changed (sending again is safe)."""
    CONFLICT = "conflict"
    """A different value was stored before: kept as it was."""
    LATE = "late"
    """A reward that came after its experiment's join window: not stored."""


class TooManyPending(RuntimeError):
    """Storing these labels would hold more labels without a prediction than allowed; nothing
    was written."""


class FirstRow(NamedTuple):
    """A unit's first answer in a window (``MonitorStore.first_rows``): when, by which model,
    and its first row's prediction and (where asked and sampled) inputs."""

    at: float
    model: str
    prediction: object
    inputs: list | None


class MonitorStore:
    """Records, labels and rewards in a SQL database; safe to use from several threads, and from
    several monitor processes at once (on PostgreSQL, one per machine)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        if db.dialect.name == "sqlite" and installed_version(db, SCHEMA.component) == 0:
            _adopt_unversioned_sqlite(db)
        upgrade(db, SCHEMA)
        self._labeled_rows = _labeled_rows(db.dialect)
        self._label_fits = _label_fits(db.dialect)

    @classmethod
    def open_sqlite(cls, path: Path, max_bytes: int | None = None) -> MonitorStore:
        """The embedded store: one SQLite file. ``max_bytes``: a cap on the file (SQLite's
        ``max_page_count``); writes past it raise ``StoreFull`` as a full disk would."""
        cap = [] if max_bytes is None else [f"max_page_count={max(1, max_bytes // PAGE_BYTES)}"]
        return cls(SQLiteDatabase(path, BUSY_TIMEOUT_S, cap))

    def add_records(self, records: Iterable[PredictionRecord]) -> int:
        """Store records (a record seen before is ignored); returns how many were new."""
        encoder = msgspec.json.Encoder()  # several times faster than json.dumps on these lists

        def encode(value: object) -> str:
            return encoder.encode(value).decode()

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
                r.correlation_id,
                int(r.pinned),
                r.unit,
            )
            for r in records
        ]
        with self.db.transaction(durable=False) as session:
            stored = session.run_many(
                f"INSERT INTO predictions ({', '.join(RECORD_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RECORD_COLUMNS))}) ON CONFLICT DO NOTHING",
                rows,
            )
            newest: dict[tuple[str, str, str], float] = {}
            for row in rows:  # (request_id, at, endpoint, variant, model, ...)
                at, key = row[1], (row[2], row[3], row[4])
                newest[key] = max(at, newest.get(key, at))
            session.run_many(
                "INSERT INTO variant_models (endpoint, variant, model, last_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, variant, model) DO UPDATE "
                "SET last_at = excluded.last_at WHERE excluded.last_at > variant_models.last_at",
                [(*key, at) for key, at in newest.items()],
            )
        self._release_waiting([row[0] for row in rows], ("labels", "rewards"))
        return stored

    def add_label(self, request_id: str, label: object) -> LabelOutcome:
        """Store a label durably; the same label again is a duplicate, another one a conflict,
        unless the stored one does not fit its request's rows and this one does (``_replaces``)."""
        return self.add_labels([(request_id, label)])[0]

    def add_labels(
        self, labels: Iterable[tuple[str, object]], max_pending: int | None = None
    ) -> list[LabelOutcome]:
        """Store many labels in one durable transaction (one fsync, however many): each
        outcome as for ``add_label``; all or none are stored. ``TooManyPending`` (nothing
        stored) when more than ``max_pending`` labels would then wait for their prediction.

        A handful of statements per call, not per label: each statement gives up the GIL, and
        while an analysis runs in another thread, getting it back costs a switch interval."""
        labels = [(request_id, json.dumps(label, sort_keys=True)) for request_id, label in labels]
        ids = [request_id for request_id, _ in labels]
        outcomes, now = [], time.time()
        rows_of = self.db.dialect.json_length.format("predictions")
        with self.db.transaction(durable=True, lock=FEEDBACK_LOCK) as session:
            stored = dict(_in_chunks(session, "SELECT request_id, label FROM labels", ids))
            answered = dict(
                _in_chunks(session, f"SELECT request_id, {rows_of} FROM predictions", ids)
            )
            new: dict[str, tuple] = {}
            replacing: dict[str, str] = {}
            for request_id, text in labels:
                earlier = replacing.get(request_id) or stored.get(request_id)
                if earlier is None and request_id in new:
                    earlier = new[request_id][1]
                if earlier is None:
                    new[request_id] = (request_id, text, now, request_id not in answered)
                    outcomes.append(LabelOutcome.STORED)
                elif earlier == text:
                    outcomes.append(LabelOutcome.DUPLICATE)
                elif _replaces(earlier, text, answered.get(request_id)):
                    replacing[request_id] = text
                    outcomes.append(LabelOutcome.STORED)
                else:
                    outcomes.append(LabelOutcome.CONFLICT)
            if max_pending is not None:
                waiting = sum(row[3] for row in new.values())
                if waiting and _pending(session, "labels") + waiting > max_pending:
                    raise TooManyPending(f"{max_pending} labels already wait for their predictions")
            session.run_many(
                "INSERT INTO labels (request_id, label, received_at, pending) VALUES (?,?,?,?)",
                [(i, label, at, int(pending)) for i, label, at, pending in new.values()],
            )
            session.run_many(
                "UPDATE labels SET label = ?, received_at = ? WHERE request_id = ?",
                [(text, now, request_id) for request_id, text in replacing.items()],
            )
            joined = [i for i, _, _, pending in new.values() if not pending]
            _mark_labeled(session, [*joined, *replacing])
        self._release_waiting([i for i, _, _, pending in new.values() if pending], ("labels",))
        return outcomes

    def add_rewards(
        self, rewards: Iterable[tuple[str, str, float, float]], max_pending: int | None = None
    ) -> list[LabelOutcome]:
        """Store (request id, metric, value, join window in seconds) rewards durably in one
        transaction, all or none: the same value again is a duplicate, another one a conflict,
        one that comes more than its join window after its prediction is late (not stored).
        Rewards for a prediction not seen yet are held like labels (``TooManyPending`` beyond
        ``max_pending``)."""
        rewards = [(i, metric, float(value), window) for i, metric, value, window in rewards]
        ids = sorted({reward[0] for reward in rewards})
        outcomes, now = [], time.time()
        with self.db.transaction(durable=True, lock=FEEDBACK_LOCK) as session:
            stored = {
                (i, metric): value
                for i, metric, value in _in_chunks(
                    session, "SELECT request_id, metric, value FROM rewards", ids
                )
            }
            answered_at = dict(_in_chunks(session, "SELECT request_id, at FROM predictions", ids))
            new: dict[tuple[str, str], tuple] = {}
            for request_id, metric, value, join_window_s in rewards:
                earlier = stored.get((request_id, metric))
                if earlier is None and (request_id, metric) in new:
                    earlier = new[(request_id, metric)][2]
                if earlier is not None:
                    same = earlier == value
                    outcomes.append(LabelOutcome.DUPLICATE if same else LabelOutcome.CONFLICT)
                elif now - answered_at.get(request_id, now) > join_window_s:
                    outcomes.append(LabelOutcome.LATE)
                else:
                    pending = request_id not in answered_at
                    new[(request_id, metric)] = (request_id, metric, value, now, pending)
                    outcomes.append(LabelOutcome.STORED)
            if max_pending is not None:
                waiting = sum(row[4] for row in new.values())
                if waiting and _pending(session, "rewards") + waiting > max_pending:
                    raise TooManyPending(
                        f"{max_pending} rewards already wait for their predictions"
                    )
            session.run_many(
                "INSERT INTO rewards (request_id, metric, value, received_at, pending) "
                "VALUES (?,?,?,?,?)",
                [(*row[:4], int(row[4])) for row in new.values()],
            )
        self._release_waiting([row[0] for row in new.values() if row[4]], ("rewards",))
        return outcomes

    def _release_waiting(self, request_ids: list[str], tables: tuple[str, ...]) -> None:
        """Labels or rewards of these requests that wait for a record stored by now stop waiting.

        Called once the write that may complete a pair (a record, or a label that had to wait)
        has committed, in a transaction of its own. Two monitors (PostgreSQL, read committed)
        storing a record and its label at once each look for the other only after their own
        write is visible, so at least one of them finds it; looking inside the writing
        transaction, both could miss. A crash between the two transactions leaves the pair to
        ``prune``, which releases what is still waiting first.

        Most of the time nothing waits (labels come after their records), and one look at the
        waiting rows' index says so: the release's statements, one parameter per request, cost
        about 4 us of CPU per record on PostgreSQL."""
        if not request_ids:
            return
        waiting = [table for table in tables if self.db.query(_ANY_WAITING[table])]
        if not waiting:
            return
        with self.db.transaction(durable=False) as session:
            for table in waiting:
                for chunk in _chunks(request_ids):
                    _release(
                        session,
                        table,
                        f"request_id IN ({_marks(chunk)}) AND {_record_stored(table)}",
                        chunk,
                    )

    def pending_rewards(self) -> int:
        """Rewards held for a prediction that has not arrived (yet)."""
        return _pending(self.db, "rewards")

    def models_answering(
        self, endpoint: str, variants: Sequence[str], since: float, until: float
    ) -> dict[str, set[str]]:
        """Each variant's models that answered its unpinned requests in [since, until)."""
        rows = self.db.query(
            "SELECT DISTINCT variant, model FROM predictions WHERE endpoint = ? AND at >= ? "
            f"AND at < ? AND pinned = 0 AND variant IN ({_marks(variants)})",
            (endpoint, since, until, *variants),
        )
        found: dict[str, set[str]] = {variant: set() for variant in variants}
        for variant, model in rows:
            found[variant].add(model)
        return found

    def unit_totals(
        self,
        endpoint: str,
        variants: Sequence[str],
        since: float,
        until: float,
        rewards: Mapping[str, float | None],
        by_request: bool = False,
    ) -> pd.DataFrame:
        """Per variant and unit (the digest of the routing key, or the request for a request
        without one), over the unpinned records of [since, until): requests, failed ones,
        answered ones and their latency sum, and for each reward metric the sum and count of its
        values. ``rewards``: metric -> the value a request without a reward counts as (None: it
        does not count); ``by_request``: every request is its own unit. Summed in the database;
        one row per unit comes back."""
        marks = _marks(variants)
        metrics = list(rewards)
        # each request's rewards as one row (a column per metric), from this endpoint's ids only
        # (ids start with "<endpoint>:"; ";" is the character after ":")
        per_request = "".join(
            f", MAX(CASE WHEN metric = ? THEN value END) AS m{i}" for i in range(len(metrics))
        )
        reward_totals = "".join(
            f", {_sum(f'COALESCE(r.m{i}, ?)')}, COUNT(COALESCE(r.m{i}, ?))"
            for i in range(len(metrics))
        )
        fills = [fill for metric in metrics for fill in (rewards[metric], rewards[metric])]
        joined = (
            f"LEFT JOIN (SELECT request_id{per_request} FROM rewards WHERE request_id > ? "
            "AND request_id < ? GROUP BY request_id) r ON r.request_id = p.request_id "
            if metrics
            else ""
        )
        bounds = [f"{endpoint}:", f"{endpoint};"] if metrics else []
        failed, answered = _count("p.outcome != 'ok'"), _count("p.outcome = 'ok'")
        latency = _sum("CASE WHEN p.outcome = 'ok' THEN p.latency_s END")
        rows = self.db.query(
            f"SELECT p.variant, {_unit(by_request)} AS u, COUNT(*), {failed}, {answered}, "
            f"{latency}{reward_totals} "
            f"FROM predictions p {joined}WHERE p.endpoint = ? AND p.at >= ? AND p.at < ? "
            f"AND p.pinned = 0 AND p.variant IN ({marks}) GROUP BY p.variant, u",
            (*fills, *metrics, *bounds, endpoint, since, until, *variants),
        )
        columns = ["variant", "unit", "requests", "failed", "answered", "latency_s"]
        for metric in rewards:
            columns += [f"{metric}_sum", f"{metric}_count"]
        return pd.DataFrame(rows, columns=columns)

    def unit_accuracy(
        self,
        endpoint: str,
        variants: Sequence[str],
        since: float,
        until: float,
        by_request: bool = False,
        within: float | None = None,
    ) -> pd.DataFrame:
        """Per variant and unit, as ``unit_totals``: labeled rows, and rows predicted right
        (``within`` as in ``labeled_counts``)."""
        marks = _marks(variants)
        totals, right = _labeled_totals(within)
        rows = self.db.query(
            f"SELECT p.variant, {_unit(by_request)} AS u, {totals} "
            f"{self._labeled_rows} WHERE p.endpoint = ? AND p.at >= ? AND p.at < ? "
            f"AND p.pinned = 0 AND p.variant IN ({marks}) AND {self._label_fits} "
            "GROUP BY p.variant, u",
            (*right, endpoint, since, until, *variants),
        )
        return pd.DataFrame(rows, columns=["variant", "unit", "labeled", "correct"])

    def answered(self, request_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Request id -> (model tag, rows answered) of the ids that have a successful record."""
        rows = _in_chunks(
            self.db,
            f"SELECT request_id, model, {self.db.dialect.json_length.format('predictions')} "
            "FROM predictions WHERE outcome = 'ok' AND",
            list(request_ids),
        )
        return {request_id: (model, count) for request_id, model, count in rows}

    def pending_labels(self) -> int:
        """Labels held for a prediction that has not arrived (yet)."""
        return _pending(self.db, "labels")

    def labeled(
        self, endpoint: str, variant: str, since: float = 0.0, max_rows: int = 1_000_000
    ) -> pd.DataFrame:
        """The newest labeled prediction rows (at most ``max_rows``), oldest first: request id,
        time, prediction, label."""
        table: list[tuple] = []
        with self.db.stream(
            f"SELECT p.request_id, p.at, p.predictions, l.label FROM {_LABELED_JOIN} "
            "WHERE p.endpoint = ? AND p.variant = ? AND p.at >= ? ORDER BY p.at DESC",
            (endpoint, variant, since),
        ) as rows:
            for request_id, at, predictions, label in rows:
                predictions = _decode_stored(predictions)
                labels = _row_labels(label, len(predictions))
                if labels is not None:
                    table += reversed([(request_id, at, p, y) for p, y in zip(predictions, labels)])
                if len(table) >= max_rows:
                    break
        table = table[:max_rows][::-1]
        return pd.DataFrame(table, columns=["request_id", "at", "prediction", "label"])

    def labeled_counts(
        self,
        endpoint: str,
        variant: str,
        since: float,
        until: float | None = None,
        include_pinned: bool = False,
        within: float | None = None,
        by_request: bool = False,
    ) -> tuple[int, int]:
        """(labeled units, units predicted right) of records in [since, until), each unit's
        first labeled row (``_first_of_each_unit``, as ``outcomes``; ``by_request``: every
        labeled row), counted in the database (no row is loaded); right is equal to the label,
        or with ``within`` (a regressor's values) at most that far from it. A label that does
        not fit its request's rows is left out as it is in ``labeled``."""
        totals, right = _labeled_totals(within, "predicted", "actual")
        firsts = _first_of_each_unit(
            "pe.value AS predicted, le.value AS actual",
            self._labeled_rows.removeprefix("FROM "),
            "p.endpoint = ? AND p.variant = ? AND p.at >= ? AND p.at < ? "
            f"AND (p.pinned = 0 OR ?) AND {self._label_fits}",
            by_request,
            then="pe.key",
        )
        window = _window(endpoint, variant, since, until, include_pinned)
        (row,) = self.db.query(f"SELECT {totals} FROM {firsts}", (*right, *window))
        return int(row[0]), int(row[1])

    def shadowed(
        self, endpoint: str, variant: str, since: float = 0.0, max_rows: int = 1_000_000
    ) -> pd.DataFrame:
        """The newest rows (at most ``max_rows``, oldest first) a shadow mirrored from this
        variant: request id, shadow, the primary's prediction, the shadow's, and the label (None
        until one joins)."""
        table: list[tuple] = []
        with self.db.stream(
            "SELECT p.request_id, p.predictions, p.shadow, l.label FROM predictions p "
            "LEFT JOIN labels l ON l.request_id = p.request_id "
            "WHERE p.endpoint = ? AND p.variant = ? AND p.at >= ? AND p.shadow != '{}' "
            "ORDER BY p.at DESC",
            (endpoint, variant, since),
        ) as rows:
            for request_id, predictions, shadows, label in rows:
                predictions = _decode_stored(predictions)
                labels = _row_labels(label, len(predictions)) or [None] * len(predictions)
                request = []
                for shadow, theirs in _decode_stored(shadows).items():
                    if len(theirs) == len(predictions):
                        request += [
                            (request_id, shadow, p, s, y)
                            for p, s, y in zip(predictions, theirs, labels)
                        ]
                table += reversed(request)
                if len(table) >= max_rows:
                    break
        table = table[:max_rows][::-1]
        columns = ["request_id", "shadow", "prediction", "shadow_prediction", "label"]
        return pd.DataFrame(table, columns=columns)

    def mirrored(
        self,
        endpoint: str,
        variant: str,
        shadow: str,
        since: float,
        include_pinned: bool = False,
        by_request: bool = False,
    ) -> tuple[list, list]:
        """What ``shadow`` answered beside this variant since ``since``, for a rollout's shadow
        step: (the variant's predictions, the shadow's), one row per unit, its first mirrored
        request's first row (``_first_of_each_unit``; ``by_request``: every row of every
        request). Requests the shadow did not answer (its call failed) are not counted."""
        key = '%"' + shadow.replace("_", "!_") + '":%'  # names have no % nor !, only _
        firsts = _first_of_each_unit(
            "p.predictions, p.shadow",
            "predictions p",
            "p.endpoint = ? AND p.variant = ? AND p.at >= ? AND p.at < ? AND (p.pinned = 0 OR ?) "
            "AND p.shadow != '{}' AND p.shadow LIKE ? ESCAPE '!'",  # the first: its index
            by_request,
        )
        ours: list = []
        theirs: list = []
        window = _window(endpoint, variant, since, None, include_pinned)
        with self.db.stream(f"SELECT predictions, shadow FROM {firsts}", (*window, key)) as rows:
            for predictions, shadows in rows:
                predictions, answered = _decode_stored(predictions), _decode_stored(shadows)
                answered = answered.get(shadow, [])
                if len(answered) == len(predictions):
                    taken = len(predictions) if by_request else 1
                    ours += predictions[:taken]
                    theirs += answered[:taken]
        return ours, theirs

    def outcomes(
        self,
        endpoint: str,
        variant: str,
        since: float,
        until: float | None = None,
        slower_than: tuple[float | None, ...] = (),
        include_pinned: bool = False,
        by_request: bool = False,
    ) -> tuple[int, ...]:
        """(units, failed, invalid, then one count per ``slower_than`` threshold) of the first
        request of each unit a variant recorded in [since, until) (``_first_of_each_unit``;
        ``by_request``: every request is a unit):
        failed means not answered (an error or a rejection), invalid means answered with a NaN
        or infinite prediction (recorded as null); each threshold (seconds; None counts 0)
        counts answers slower than it. Pinned requests are left out unless ``include_pinned``."""
        slow = _count("outcome = 'ok' AND latency_s > ?")
        slower = "".join(f", {slow}" for _ in slower_than)
        failed = _count("outcome != 'ok'")
        invalid = _count("outcome = 'ok' AND predictions LIKE '%null%'")
        firsts = _first_of_each_unit(
            "p.outcome, p.latency_s, p.predictions",
            "predictions p",
            "p.endpoint = ? AND p.variant = ? AND p.at >= ? AND p.at < ? AND (p.pinned = 0 OR ?)",
            by_request,
        )
        thresholds = (math.inf if t is None else t for t in slower_than)
        window = _window(endpoint, variant, since, until, include_pinned)
        (row,) = self.db.query(
            f"SELECT COUNT(*), {failed}, {invalid}{slower} FROM {firsts}", (*thresholds, *window)
        )
        return tuple(int(v) for v in row)

    def slowest_latencies(
        self,
        endpoint: str,
        variant: str,
        since: float,
        ranks: Sequence[int],
        include_pinned: bool = False,
        by_request: bool = False,
    ) -> dict[int, float]:
        """The latency (seconds) at each of ``ranks`` (1-based, slowest first) among the first
        requests of each unit a variant answered since ``since``, as ``outcomes`` counts them (a
        rank past the fastest answer is left out). Every answer in the window is ranked, however
        long it is: a threshold read from its beginning alone judges later answers against a time
        that may have been faster or slower for both arms. Slowest first, because a caller that
        counted the answers first and asks for the k-th fastest of them as the (n - k + 1)-th
        slowest gets, if more were stored meanwhile, a slower one, never a faster one."""
        if not ranks:
            return {}
        firsts = _first_of_each_unit(
            "p.outcome, p.latency_s",
            "predictions p",
            "p.endpoint = ? AND p.variant = ? AND p.at >= ? AND (p.pinned = 0 OR ?)",
            by_request,
        )
        ranked = (
            "SELECT latency_s, ROW_NUMBER() OVER (ORDER BY latency_s DESC) AS nth FROM "
            f"(SELECT firsts.outcome, firsts.latency_s FROM {firsts}) f WHERE outcome = 'ok'"
        )
        rows = self.db.query(
            f"SELECT nth, latency_s FROM ({ranked}) ranked WHERE nth IN ({_marks(ranks)})",
            (endpoint, variant, since, include_pinned, *ranks),
        )
        return {int(nth): float(latency) for nth, latency in rows}

    def first_rows(
        self,
        endpoint: str,
        variants: Sequence[str],
        since: float,
        max_rows: int,
        include_pinned: bool = False,
        by_request: bool = False,
        inputs: bool = False,
        shares: Mapping[str, float] | None = None,
    ) -> dict[str, list[FirstRow]]:
        """Each variant's units by their first request since ``since`` that it answered (as
        ``outcomes`` counts them), in time order, with that answer's first row: its prediction
        (a unit is left out where that was a null, an output that was not finite, or where the
        record has no rows, which monitors refuse but an earlier version may have stored), and
        with ``inputs`` its input row (left out where the gateway sampled none). ``shares``: of a
        variant's units, the share read (by a hash of the unit: a unit is read or not whatever
        the time; 1 where not given).

        Every variant is read over the same span: until the first of them has ``max_rows``, so
        that at a 5% step stable's first units, which fill twenty times as fast, are not compared
        with the candidate's from later hours, when the mix of inputs may have moved for both
        (with stable's share at 5/95, both fill alike, and the candidate's are not cut to a
        nineteenth of ``max_rows``). Each list only grows as time passes, until the first is
        full; then none changes again. Read in time order until full, so a long window costs no
        more than its first units."""
        shares = shares or {}
        found = {
            variant: self._first_rows(
                endpoint,
                variant,
                since,
                max_rows,
                include_pinned,
                by_request,
                inputs,
                shares.get(variant, 1.0),
            )
            for variant in variants
        }
        full = [rows[-1].at for rows in found.values() if len(rows) == max_rows]
        if not full:
            return found
        until = min(full)
        return {variant: [r for r in rows if r.at <= until] for variant, rows in found.items()}

    def _first_rows(
        self,
        endpoint: str,
        variant: str,
        since: float,
        max_rows: int,
        include_pinned: bool,
        by_request: bool,
        inputs: bool,
        share: float,
    ) -> list[FirstRow]:
        """One variant's ``first_rows``, read no further than its ``max_rows``-th."""
        columns = "at, model, predictions" + (", inputs" if inputs else ", NULL")
        unit = _unit(by_request)
        # a unit's last 8 characters are hex of a hash (a key's digest) or random (a request id)
        sampled = f" AND substr({unit}, length({unit}) - 7) < ?" if share < 1 else ""
        below = (f"{int(share * 16**8):08x}",) if share < 1 else ()
        seen: set[str] = set()
        found: list[FirstRow] = []
        with self.db.stream(
            f"SELECT {unit}, outcome, {columns} FROM predictions p WHERE endpoint = ? "
            f"AND variant = ? AND at >= ? AND (pinned = 0 OR ?){sampled} ORDER BY at",
            (endpoint, variant, since, include_pinned, *below),
        ) as rows:
            for unit, outcome, at, model, predictions, row_inputs in rows:
                if unit in seen:
                    continue
                seen.add(unit)
                if outcome != "ok" or (inputs and row_inputs is None):
                    continue
                predicted = _decode_stored(predictions)
                given = _decode_stored(row_inputs) if inputs else predicted
                if not predicted or predicted[0] is None or len(given) != len(predicted):
                    continue
                found.append(FirstRow(at, model, predicted[0], given[0] if inputs else None))
                if len(found) == max_rows:
                    break
        return found

    def active(self, since: float) -> list[tuple[str, str, str]]:
        """(endpoint, variant, model) that recorded predictions since ``since``."""
        return self.db.query(
            "SELECT endpoint, variant, model FROM variant_models WHERE last_at >= ? "
            "ORDER BY endpoint, variant, model",
            (since,),
        )

    def variant_state(self, endpoint: str, variant: str, since: float) -> tuple:
        """A fingerprint of what an analysis of a variant reads since ``since``: its records
        (the count, the first and last times and their sum) and the labels joined to them (the
        count and the sum of their records' times), from two index reads.

        Records and labels never change once stored, and anything that changes what a run reads
        changes the fingerprint: a record stored, pruned or older than ``since`` changes the
        count of records; a label joined or pruned, the count of labeled ones; both at once would
        also have to leave the sums of the times, which the gateways set, exactly as they were.
        Equal fingerprints, then, mean the same rows to read, and the same analysis."""
        (records,) = self.db.query(
            "SELECT COUNT(*), MIN(at), MAX(at), SUM(at) FROM predictions "
            "WHERE endpoint = ? AND variant = ? AND at >= ?",
            (endpoint, variant, since),
        )
        (labeled,) = self.db.query(
            f"SELECT COUNT(*), SUM(p.at) FROM {_LABELED_JOIN} "
            "WHERE p.endpoint = ? AND p.variant = ? AND p.at >= ?",
            (endpoint, variant, since),
        )
        return (*records, *labeled)

    def newest(self) -> float | None:
        """Time of the newest record, if any."""
        return self.db.query("SELECT MAX(at) FROM predictions")[0][0]

    def counts(self) -> list[dict]:
        """Records and labeled records per endpoint and variant."""
        rows = self.db.query(
            "SELECT p.endpoint, p.variant, COUNT(*), COUNT(l.request_id) FROM predictions p "
            "LEFT JOIN labels l ON l.request_id = p.request_id GROUP BY p.endpoint, p.variant"
        )
        return [
            {"endpoint": e, "variant": v, "records": n, "labeled": labeled}
            for e, v, n, labeled in rows
        ]

    def window(
        self, endpoint: str, variant: str, max_rows: int, since: float = 0.0
    ) -> pd.DataFrame:
        """The newest recorded input rows (at most ``max_rows``, with their predictions) of a
        variant, oldest first. A record with fewer or more predictions than rows is left out:
        monitors refuse them, but a store written by an earlier version (or by one still running
        beside a newer one in a rolling upgrade) may hold some, and one would fail the window."""
        requests, count = [], 0
        with self.db.stream(
            "SELECT inputs, predictions FROM predictions WHERE endpoint = ? AND variant = ? "
            "AND at >= ? AND inputs IS NOT NULL ORDER BY at DESC",
            (endpoint, variant, since),
        ) as rows:
            for raw_inputs, raw_predictions in rows:
                inputs, predictions = _decode_stored(raw_inputs), _decode_stored(raw_predictions)
                if len(inputs) != len(predictions):
                    continue
                requests.append((inputs, predictions))
                count += len(inputs)
                if count >= max_rows:
                    break
        inputs, predictions = [], []
        for request_inputs, request_predictions in reversed(requests):
            inputs += request_inputs
            predictions += request_predictions
        try:  # numbers, null where one was not finite: one array, twice as fast as the lists
            frame = pd.DataFrame(np.array(inputs, dtype=float)) if inputs else pd.DataFrame()
        except (TypeError, ValueError):  # rows of other lengths, or values that are not numbers
            frame = pd.DataFrame(inputs)
        frame["prediction"] = predictions
        return frame.tail(max_rows).reset_index(drop=True)

    def prune(
        self,
        predictions_before: float,
        labels_before: float,
        pending_before: float,
        kept: Mapping[str, float] | None = None,
    ) -> dict:
        """Delete records older than ``predictions_before``, joined labels and rewards received
        before ``labels_before`` and pending ones received before ``pending_before`` (expired:
        their prediction never came). In chunks, so ingestion does not wait behind it. Returns the
        number of rows deleted of each kind.

        ``kept``: endpoint -> a time from which its records, and the labels and rewards received
        for them, stay whatever their age (an experiment's window: its readout needs every unit).

        First, held labels and rewards whose record is stored stop waiting: a monitor that
        crashed between storing one of a pair and releasing the other (``_release_waiting``)
        leaves them so, and such a label would otherwise expire beside its record."""
        with self.db.transaction(durable=False) as session:
            for table in ("labels", "rewards"):
                _release(session, table, _record_stored(table), ())
        spared_records, records_spared = _spared(kept or {}, joined=False)
        spared_joined, joined_spared = _spared(kept or {}, joined=True)
        deleted = {}
        for kind, statement, cutoff, spared in (
            (
                "predictions",
                "DELETE FROM predictions WHERE request_id IN "
                f"(SELECT request_id FROM predictions WHERE at < ?{spared_records} LIMIT ?)",
                predictions_before,
                records_spared,
            ),
            (
                "labels",
                "DELETE FROM labels WHERE request_id IN (SELECT request_id FROM labels "
                f"WHERE pending = 0 AND received_at < ?{spared_joined} LIMIT ?)",
                labels_before,
                joined_spared,
            ),
            (
                "expired_labels",
                "DELETE FROM labels WHERE request_id IN (SELECT request_id FROM labels "
                "WHERE pending = 1 AND received_at < ? LIMIT ?)",
                pending_before,
                (),
            ),
            (
                "rewards",
                "DELETE FROM rewards WHERE (request_id, metric) IN (SELECT request_id, metric "
                f"FROM rewards WHERE pending = 0 AND received_at < ?{spared_joined} LIMIT ?)",
                labels_before,
                joined_spared,
            ),
            (
                "expired_rewards",
                "DELETE FROM rewards WHERE (request_id, metric) IN (SELECT request_id, metric "
                "FROM rewards WHERE pending = 1 AND received_at < ? LIMIT ?)",
                pending_before,
                (),
            ),
        ):
            deleted[kind] = 0
            while True:
                with self.db.transaction(durable=False) as session:
                    removed = session.run(statement, (cutoff, *spared, PRUNE_CHUNK))
                deleted[kind] += removed
                if removed < PRUNE_CHUNK:
                    break
        return deleted


def _spared(kept: Mapping[str, float], joined: bool) -> tuple[str, tuple]:
    """SQL conditions (and their parameters) that leave out of a prune the records of each kept
    endpoint from its time on, or (``joined``) the labels or rewards received for it since. Those
    name their endpoint only as their request id's prefix (``<endpoint>:``, service/names.py),
    compared whole: LIKE would read a ``_`` in a name as any character."""
    condition, parameters = "", ()
    for endpoint, since in kept.items():
        if joined:
            condition += " AND NOT (substr(request_id, 1, ?) = ? AND received_at >= ?)"
            parameters += (len(endpoint) + 1, f"{endpoint}:", since)
        else:
            condition += " AND NOT (endpoint = ? AND at >= ?)"
            parameters += (endpoint, since)
    return condition, parameters


def _count(condition: str) -> str:
    """SQL: how many rows meet ``condition`` (0 when none)."""
    return f"COALESCE(SUM(CASE WHEN {condition} THEN 1 ELSE 0 END), 0)"


def _sum(expression: str) -> str:
    """SQL: the sum of ``expression`` over the rows (0 when none)."""
    return f"COALESCE(SUM({expression}), 0)"


_LABELED_JOIN = "predictions p JOIN labels l ON l.request_id = p.request_id AND p.labeled = 1"
"""Records with their labels, read through the index of records a label joined (schema version
3): without ``p.labeled = 1`` the join reads every record of the window to find the few."""


def _labeled_rows(dialect: Dialect) -> str:
    """Labeled prediction rows: each row of a record beside its label's value for that row."""
    predictions = dialect.json_elements.format("p.predictions", "pe")
    labels = dialect.json_elements.format(dialect.json_as_array.format("l.label"), "le")
    return f"FROM {_LABELED_JOIN} JOIN {predictions} ON 1 = 1 JOIN {labels} ON le.key = pe.key"


def _label_fits(dialect: Dialect) -> str:
    """A label that does not fit its request's rows is left out, as ``labeled`` leaves it out."""
    length = dialect.json_length
    return f"{length.format('p.predictions')} = {length.format(dialect.json_as_array.format('l.label'))}"


def _labeled_totals(
    within: float | None = None, predicted: str = "pe.value", actual: str = "le.value"
) -> tuple[str, tuple[float, ...]]:
    """SQL for (labeled rows, rows predicted right) over the labeled rows, and its parameters:
    a right prediction equals its label, or with ``within`` is at most that far from it."""
    if within is None:
        return f"COUNT(*), {_count(f'CAST({predicted} AS TEXT) = CAST({actual} AS TEXT)')}", ()
    distance = f"ABS(CAST({predicted} AS DOUBLE PRECISION) - CAST({actual} AS DOUBLE PRECISION))"
    return f"COUNT(*), {_count(f'{distance} <= ?')}", (within,)


def _window(
    endpoint: str, variant: str, since: float, until: float | None, include_pinned: bool
) -> tuple:
    """The parameters of a rollout query's window: a variant's records in [since, until)."""
    return (endpoint, variant, since, math.inf if until is None else until, include_pinned)


def _first_of_each_unit(
    columns: str, source: str, where: str, by_request: bool = False, then: str = ""
) -> str:
    """SQL (after FROM): ``columns`` of each unit's first record in ``source`` (aliased ``p``)
    that meets ``where``; a request without a routing key is its own unit, and with
    ``by_request`` every request is.

    Rollouts judge units, not requests. Routing is sticky by key, so a unit's requests all land
    in one arm, and users differ: one whose requests are slow (large batches) or hard to
    predict, or who sends a tenth of the traffic, moves its arm's request counts by itself,
    and tests that take requests as independent then reject a healthy candidate far beyond
    their budget. Units are independent, so counting each one once keeps the tests exact;
    ``then`` orders a record's rows (one labeled row per unit). Every request (every row) is
    read as it is with ``by_request``: no unit to find, and a plain count is several times
    cheaper."""
    if by_request:
        return f"(SELECT {columns} FROM {source} WHERE {where}) firsts"
    order = f"p.at, p.request_id{f', {then}' if then else ''}"
    return (
        f"(SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY {_unit(by_request=False)} "
        f"ORDER BY {order}) AS nth FROM {source} WHERE {where}) firsts WHERE firsts.nth = 1"
    )


FEEDBACK_LOCK = "monitor:feedback"
"""Label and reward writes take turns (on every machine): each decides from what is stored."""


def _adopt_unversioned_sqlite(db: Database) -> None:
    """Bring a SQLite file from before versioned schemas to version 1: a predictions table from
    before records named their model is set aside (labels kept); newer columns are added."""
    with db.transaction() as session:
        columns = {row[1] for row in session.query("PRAGMA table_info(predictions)")}
        if columns and not columns >= set(RECORD_COLUMNS) - set(ADDED_COLUMNS["predictions"]):
            session.run(f"ALTER TABLE predictions RENAME TO predictions_before_{int(time.time())}")
            session.run("DROP INDEX IF EXISTS predictions_by_variant")
            session.run("DROP INDEX IF EXISTS predictions_by_time")
        for table, added in ADDED_COLUMNS.items():
            columns = {row[1] for row in session.query(f"PRAGMA table_info({table})")}
            for column, kind in added.items():
                if columns and column not in columns:
                    session.run(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _pending(db: Database | Session, table: str) -> int:
    """Labels or rewards held for a prediction that has not arrived (yet)."""
    return db.query(f"SELECT COUNT(*) FROM {table} WHERE pending = 1")[0][0]


def _unit(by_request: bool) -> str:
    """What an experiment counts as a unit: the request, or the routing key's digest when the
    request had a key."""
    return "p.request_id" if by_request else "COALESCE(p.unit, p.request_id)"


CHUNK = 500
"""Ids per ``IN (...)`` list (SQLite caps the number of parameters of one statement)."""


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK)]


def _marks(values: Sequence) -> str:
    return ",".join("?" * len(values))


def _in_chunks(db: Database | Session, select: str, ids: list[str]) -> list[tuple]:
    """The rows of ``select ... request_id IN (ids)``, a chunk of ids per statement; ``select``
    ends with its FROM clause, or with ``AND`` after a condition of its own."""
    joiner = " " if select.endswith(" AND") else " WHERE "
    rows: list[tuple] = []
    for chunk in _chunks(ids):
        rows += db.query(f"{select}{joiner}request_id IN ({_marks(chunk)})", chunk)
    return rows


def _record_stored(table: str) -> str:
    """SQL: the record of a row of ``table`` (labels or rewards) is stored."""
    return f"EXISTS (SELECT 1 FROM predictions p WHERE p.request_id = {table}.request_id)"


def _release(session: Session, table: str, condition: str, params: Sequence) -> None:
    """Held labels or rewards meeting ``condition`` (SQL on ``table``), whose records are stored,
    stop waiting; the records of the labels among them are marked labeled."""
    joined = session.query(
        f"UPDATE {table} SET pending = 0 WHERE pending = 1 AND {condition} RETURNING request_id",
        params,
    )
    if table == "labels" and joined:
        _mark_labeled(session, [request_id for (request_id,) in joined])


def _mark_labeled(session: Session, request_ids: list[str]) -> None:
    """Mark the records these labels joined (what ``labeled`` and the labeled counts read by
    their index)."""
    for chunk in _chunks(request_ids):
        session.run(
            f"UPDATE predictions SET labeled = 1 WHERE request_id IN ({_marks(chunk)})", chunk
        )


def _replaces(earlier: str, label: str, rows: int | None) -> bool:
    """Whether ``label`` takes the place of a different one stored for its request: only when
    the request's record is here (``rows``) and the stored one does not fit its rows while this
    one does. Labels may come before their record, where their rows cannot be checked; one that
    then did not fit was never joined, and every later label, the right one too, was refused
    as a conflict with it."""
    return (
        rows is not None
        and _row_labels(earlier, rows) is None
        and _row_labels(label, rows) is not None
    )


def _row_labels(label: str | None, rows: int) -> list | None:
    """A stored label as one label per row; None when there is none or it does not fit the rows
    (a label that does not fit the request's rows cannot be joined)."""
    if label is None:
        return None
    try:
        value = _decode_stored(label)
    except msgspec.DecodeError:  # NaN or Infinity, which json.dumps writes and JSON has not
        value = json.loads(label)
    labels = value if isinstance(value, list) else [value]
    return labels if len(labels) == rows else None
