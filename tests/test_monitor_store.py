"""Records, labels and rewards: the bounded buffer never blocks, labels and rewards join whichever
arrives first, duplicates are idempotent, conflicts are refused, late rewards are not stored,
labels survive a reopen, accuracy and per-unit totals are right."""

from __future__ import annotations

import numpy as np
import pytest

from monitors.records import PredictionRecord, RecordBuffer, encode_batch, encoded_size
from monitors.store import SCHEMA, LabelOutcome, MonitorStore, TooManyPending
from storage.database import StoreFull
from storage.schema import Schema, installed_version, upgrade


def record(request_id: str, predictions, at: float = 1000.0, variant: str = "stable", inputs=None):
    return PredictionRecord(
        request_id, at, "churn", variant, "churn:v1", predictions, 0.002, inputs=inputs
    )


def test_buffer_drops_and_counts_when_full_and_drains_in_order():
    buffer = RecordBuffer(capacity=3)
    assert all(buffer.append(record(f"r{i}", [0])) for i in range(3))
    assert not buffer.append(record("r3", [0])) and buffer.dropped == 1
    batch = buffer.drain(2)
    assert [r.request_id for r in batch] == ["r0", "r1"] and len(buffer) == 1
    buffer.requeue(batch)
    assert [r.request_id for r in buffer.drain(10)] == ["r0", "r1", "r2"]
    with pytest.raises(ValueError):
        RecordBuffer(0)


def test_requeue_keeps_what_fits_and_counts_the_rest():
    buffer = RecordBuffer(capacity=2)
    buffer.append(record("new", [0]))
    buffer.requeue([record("a", [0]), record("b", [0])])
    assert [r.request_id for r in buffer.drain(5)] == ["a", "new"] and buffer.dropped == 1


def test_the_buffer_and_its_batches_are_bounded_in_bytes():
    rows = np.ones((4096, 30), np.float32)  # a request of the most rows a request may have
    big = PredictionRecord("big", 1.0, "e", "v", "m:v1", np.zeros(4096), 0.1, inputs=rows)
    assert encoded_size(big) >= len(encode_batch([big]))  # the estimate is an upper bound
    buffer = RecordBuffer(capacity=10_000, capacity_bytes=4 * encoded_size(big))
    assert all(buffer.append(big) for _ in range(4)) and not buffer.append(big)
    assert buffer.dropped == 1 and buffer.bytes == 4 * encoded_size(big)
    small = record("small", [0])
    buffer = RecordBuffer(capacity=10_000)
    for _ in range(3):
        buffer.append(small)
    buffer.append(big)
    buffer.append(small)
    limit = encoded_size(big)
    batches = [buffer.drain(500, limit) for _ in range(3)]
    assert [len(b) for b in batches] == [3, 1, 1]  # the big one alone, whatever the limit
    assert all(len(encode_batch(b)) <= limit for b in batches)


def test_labels_join_whether_they_come_before_or_after(open_database):
    store = MonitorStore(open_database())
    assert store.add_label("early", "yes") == LabelOutcome.STORED  # before its prediction
    store.add_records([record("early", ["yes"]), record("late", ["no", "no"])])
    assert store.add_label("late", ["no", "yes"]) == LabelOutcome.STORED  # after, per row
    joined = store.labeled("churn", "stable")
    assert list(zip(joined.request_id, joined.prediction, joined.label)) == [
        ("early", "yes", "yes"),
        ("late", "no", "no"),
        ("late", "no", "yes"),
    ]
    assert (joined.prediction == joined.label).mean() == pytest.approx(2 / 3)


def test_duplicates_are_idempotent_conflicts_refused_and_labels_durable(open_database):
    store = MonitorStore(open_database())
    assert store.add_label("r1", 1) == LabelOutcome.STORED
    assert store.add_label("r1", 1) == LabelOutcome.DUPLICATE
    assert store.add_label("r1", 0) == LabelOutcome.CONFLICT
    reopened = MonitorStore(open_database())
    reopened.add_records([record("r1", [1])])
    assert reopened.labeled("churn", "stable").label.tolist() == [1]


def test_a_label_that_came_early_and_does_not_fit_its_rows_gives_way_to_one_that_does(
    open_database,
):
    """Its rows could not be checked before its record came, and it was never joined; the
    right label after it was refused as a conflict, for good."""
    store = MonitorStore(open_database())
    assert store.add_label("two", "yes") == LabelOutcome.STORED  # one value, before the record
    assert store.add_label("one", "yes") == LabelOutcome.STORED
    store.add_records([record("two", ["no", "yes"]), record("one", ["yes"])])
    assert store.labeled("churn", "stable").request_id.tolist() == ["one"]
    assert store.add_label("one", "no") == LabelOutcome.CONFLICT  # it fits: kept as it was
    assert store.add_label("two", ["no"]) == LabelOutcome.CONFLICT  # no better
    outcomes = store.add_labels([("two", ["no", "no"]), ("two", ["no", "yes"])])
    assert outcomes == [LabelOutcome.STORED, LabelOutcome.CONFLICT]
    assert store.add_label("two", ["no", "no"]) == LabelOutcome.DUPLICATE
    joined = store.labeled("churn", "stable")
    assert list(zip(joined.request_id, joined.label)) == [
        ("two", "no"),
        ("two", "no"),
        ("one", "yes"),
    ]
    assert store.labeled_counts("churn", "stable", 0.0, None) == (2, 2)  # first rows, both right


def test_labels_wait_for_their_prediction_bounded_in_number_and_expire(open_database):
    store = MonitorStore(open_database())
    store.add_label("ghost", 1)
    store.add_label("real", 1)
    assert store.pending_labels() == 2
    store.add_records([record("real", [1])])
    assert store.pending_labels() == 1  # joined: no longer waiting
    with pytest.raises(TooManyPending):  # one more would hold two: nothing stored
        store.add_labels([("later", 1), ("ghost2", 0)], max_pending=2)
    assert store.pending_labels() == 1 and store.add_label("later", 1) == LabelOutcome.STORED
    assert store.add_labels([("real", 1)], max_pending=2) == [LabelOutcome.DUPLICATE]
    deleted = store.prune(predictions_before=0, labels_before=0, pending_before=10**12)
    assert deleted["expired_labels"] == 2 and store.pending_labels() == 0
    assert store.add_label("real", 1) == LabelOutcome.DUPLICATE  # a joined label is kept


def test_a_label_left_waiting_beside_its_record_is_joined_by_pruning_not_expired(open_database):
    """A monitor that crashed between storing a record and releasing its held label leaves the
    label held although its record is stored. Pruning joins it instead of expiring it."""
    database = open_database()
    store = MonitorStore(database)
    store.add_records([record("raced", ["yes"])])
    database.run(
        "INSERT INTO labels (request_id, label, received_at, pending) VALUES ('raced', '\"yes\"', 1, 1)"
    )
    store.add_label("ghost", "no")  # its record never comes
    assert store.labeled("churn", "stable").empty and store.pending_labels() == 2
    deleted = store.prune(predictions_before=0, labels_before=0, pending_before=10**12)
    assert deleted["expired_labels"] == 1 and store.pending_labels() == 0
    assert store.labeled("churn", "stable").label.tolist() == ["yes"]


def test_pruning_removes_old_records_and_labels_in_chunks(open_database):
    store = MonitorStore(open_database())
    store.add_records([record(f"r{i}", [i], at=float(i)) for i in range(12_000)])
    store.add_labels([(f"r{i}", i) for i in range(100)])
    deleted = store.prune(predictions_before=11_000.0, labels_before=10**12, pending_before=0)
    assert deleted == {
        "predictions": 11_000,
        "labels": 100,
        "expired_labels": 0,
        "rewards": 0,
        "expired_rewards": 0,
    }
    assert sum(c["records"] for c in store.counts()) == 1000


def test_pruning_spares_a_kept_endpoints_records_and_their_labels_and_rewards(open_database):
    """An experiment's window outlives the records' retention; its endpoint's records from the
    window's start stay, with the labels and rewards received since. Another endpoint whose
    name matches it as a LIKE pattern would (``a_b`` and ``axb``) is pruned as usual."""
    store = MonitorStore(open_database())
    records = [
        PredictionRecord(f"{e}:{i}", 1000.0 + i, e, "stable", "m:v1", [1], 0.002)
        for e in ("a_b", "axb")
        for i in range(10)
    ]
    store.add_records(records)
    store.add_labels([(r.request_id, 1) for r in records])
    store.add_rewards([(r.request_id, "converted", 1.0, 10**12) for r in records])
    everything = 10**12
    deleted = store.prune(everything, everything, 0, kept={"a_b": 1005.0})
    assert deleted == {
        "predictions": 15,
        "labels": 10,
        "expired_labels": 0,
        "rewards": 10,
        "expired_rewards": 0,
    }
    assert store.counts() == [{"endpoint": "a_b", "variant": "stable", "records": 5, "labeled": 5}]


def test_a_full_database_refuses_the_write_and_keeps_what_it_had(tmp_path):
    store = MonitorStore.open_sqlite(tmp_path / "monitor.sqlite3", max_bytes=256 * 1024)
    store.add_label("kept", 1)
    big = [[float(i)] * 50 for i in range(200)]
    with pytest.raises(StoreFull):
        for i in range(1000):
            store.add_records([record(f"r{i}", [0] * 200, inputs=big)])
    with pytest.raises(StoreFull):
        store.add_labels([(f"label-{i}", "x" * 1000) for i in range(2000)])
    assert store.add_label("kept", 1) == LabelOutcome.DUPLICATE  # still readable and whole
    assert store.pending_labels() == 1


def test_window_returns_the_newest_input_rows_with_predictions(open_database):
    store = MonitorStore(open_database())
    store.add_records(
        [record(f"r{i}", [i], at=1000.0 + i, inputs=[[float(i), 1.0]]) for i in range(10)]
        + [record("other", [9], variant="candidate", inputs=[[9.0, 9.0]])]
    )
    window = store.window("churn", "stable", max_rows=4)
    assert window[0].tolist() == [6.0, 7.0, 8.0, 9.0] and window.prediction.tolist() == [6, 7, 8, 9]
    assert store.add_records([record("r0", [0])]) == 0  # a record seen before is ignored


def test_a_window_leaves_out_records_with_other_numbers_of_rows_and_predictions(open_database):
    """Monitors refuse them now; a store an earlier version wrote may hold some."""
    store = MonitorStore(open_database())
    store.add_records(
        [
            record("fits", [1], at=1.0, inputs=[[1.0, 1.0]]),
            record("fewer", [2], at=2.0, inputs=[[2.0, 2.0], [2.5, 2.5]]),
            record("more", [3, 3], at=3.0, inputs=[[3.0, 3.0]]),
            record("also", [4], at=4.0, inputs=[[4.0, 4.0]]),
        ]
    )
    window = store.window("churn", "stable", max_rows=10)
    assert window[0].tolist() == [1.0, 4.0] and window.prediction.tolist() == [1, 4]


def test_active_variants_since(open_database):
    store = MonitorStore(open_database())
    store.add_records([record("a", [1], at=10.0), record("b", [1], at=20.0, variant="candidate")])
    assert store.active(since=15.0) == [("churn", "candidate", "churn:v1")]
    store.add_records([record("late", [1], at=12.0, variant="candidate")])  # older, late
    store.add_records([record("c", [1], at=30.0), record("d", [1], at=16.0)])
    assert store.active(since=25.0) == [("churn", "stable", "churn:v1")]
    assert len(store.active(since=15.0)) == 2


def test_a_version_1_store_is_upgraded_and_reads_the_same(open_database):
    """Version 2 keeps each variant's newest record in a table of its own and indexes the
    requests a shadow mirrored; version 3 marks the records a label joined; version 4 indexes the
    records with inputs. A store written before them finds the same variants, shadows, labeled
    rows and window afterwards."""
    database = open_database()
    upgrade(database, Schema(SCHEMA.component, SCHEMA.migrations[:1]))
    columns = "request_id, at, endpoint, variant, model, predictions, shadow, latency_s, outcome"
    with database.transaction() as session:
        for request_id, at, variant, shadow in (
            ("a", 10.0, "stable", "{}"),
            ("b", 20.0, "candidate", '{"next": [1]}'),
        ):
            session.run(
                f"INSERT INTO predictions ({columns}, inputs) VALUES (?, ?, 'churn', ?, "
                "'churn:v1', '[0]', ?, 0.01, 'ok', '[[0.5]]')",
                (request_id, at, variant, shadow),
            )
        session.run(
            "INSERT INTO labels (request_id, label, received_at, pending) VALUES ('b', '0', 21, 0)"
        )
    store = MonitorStore(database)
    assert installed_version(database, SCHEMA.component) == SCHEMA.version == 4
    assert store.active(since=15.0) == [("churn", "candidate", "churn:v1")]
    assert store.window("churn", "stable", max_rows=10)[0].tolist() == [0.5]
    assert store.labeled("churn", "candidate").request_id.tolist() == ["b"]
    assert store.labeled_counts("churn", "candidate", 0) == (1, 1)
    assert store.shadowed("churn", "candidate").shadow_prediction.tolist() == [1]
    assert store.shadowed("churn", "stable").empty


def test_a_store_from_before_records_named_their_model_is_set_aside(tmp_path):
    import sqlite3

    path = tmp_path / "monitor.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE predictions (request_id TEXT PRIMARY KEY, at REAL, endpoint TEXT, "
        "variant TEXT, model_version TEXT NOT NULL, predictions TEXT, inputs TEXT, shadow TEXT, "
        "latency_s REAL, outcome TEXT)"
    )
    old.execute("CREATE TABLE labels (request_id TEXT PRIMARY KEY, label TEXT, received_at REAL)")
    old.execute("INSERT INTO labels VALUES ('kept', '1', 0)")
    old.commit()
    old.close()
    store = MonitorStore.open_sqlite(path)
    assert store.add_records([record("r1", [1])]) == 1
    assert store.add_label("kept", 1) == LabelOutcome.DUPLICATE  # labels are kept


def test_shadow_rows_come_back_beside_the_primary_with_labels_once_joined(open_database):
    from monitors.shadow import compare_shadows

    store = MonitorStore(open_database())
    store.add_records(
        [
            PredictionRecord(
                "a",
                1.0,
                "churn",
                "stable",
                "churn:v1",
                [1.0, 2.0],
                0.001,
                shadow={"next": [1.0, 2.5]},
            ),
            PredictionRecord(
                "b", 2.0, "churn", "stable", "churn:v1", [3.0], 0.001, shadow={"next": [3.0000001]}
            ),
            record("c", [4.0]),  # not mirrored
        ]
    )
    store.add_label("a", [1.5, 2.5])
    rows = store.shadowed("churn", "stable")
    assert rows.request_id.tolist() == ["a", "a", "b"]
    assert rows.label.tolist()[:2] == [1.5, 2.5] and rows.label.isna().tolist()[2]
    (result,) = compare_shadows(rows, classes=None, min_rows=2)
    assert result.shadow == "next" and result.rows == 3
    assert result.agreement == pytest.approx(2 / 3)  # 3.0000001 is within 1e-6 relative
    assert result.quality.metrics["mae"] == pytest.approx(0.25)  # |1-1.5|, |2.5-2.5|


def unit_record(request_id, variant, unit, at=1000.0, outcome="ok", latency_s=0.01, pinned=False):
    predictions = [1] if outcome == "ok" else []
    return PredictionRecord(
        request_id,
        at,
        "churn",
        variant,
        f"churn:{variant}",
        predictions,
        latency_s,
        outcome=outcome,
        pinned=pinned,
        unit=unit,
    )


def test_rewards_are_idempotent_held_until_their_prediction_and_refused_when_late(open_database):
    import time

    store = MonitorStore(open_database())
    now = time.time()
    store.add_records(
        [
            unit_record("churn:old", "a", "u1", at=now - 7200),
            unit_record("churn:new", "a", "u1", at=now),
        ]
    )
    hour = 3600
    outcomes = store.add_rewards(
        [
            ("churn:new", "converted", 1, hour),
            ("churn:new", "converted", 1, hour),  # the same twice in one call: once
            ("churn:new", "revenue", 2.5, hour),
            ("churn:old", "converted", 1, hour),  # two hours after its prediction
            ("churn:early", "converted", 0, hour),  # its prediction has not come yet
        ]
    )
    assert [o.value for o in outcomes] == ["stored", "duplicate", "stored", "late", "stored"]
    assert store.add_rewards([("churn:new", "converted", 0, hour)]) == [LabelOutcome.CONFLICT]
    assert store.add_rewards([("churn:new", "converted", 1.0, hour)]) == [LabelOutcome.DUPLICATE]
    assert store.pending_rewards() == 1
    with pytest.raises(TooManyPending):  # nothing of this call is stored
        store.add_rewards(
            [("churn:ghost", "converted", 1, hour), ("churn:new", "clicks", 3, hour)], 1
        )
    store.add_records([unit_record("churn:early", "b", "u2", at=now)])
    assert store.pending_rewards() == 0
    totals = store.unit_totals("churn", ["a", "b"], 0, now + 1, {"converted": 0.0, "clicks": None})
    by_unit = totals.set_index("unit")
    assert by_unit.loc["u1", "converted_sum"] == 1 and by_unit.loc["u1", "converted_count"] == 2
    assert by_unit.loc["u1", "clicks_count"] == 0  # not stored: the call was refused whole
    assert by_unit.loc["u2", "converted_sum"] == 0 and by_unit.loc["u2", "converted_count"] == 1
    deleted = store.prune(predictions_before=0, labels_before=now + 1, pending_before=0)
    assert deleted["rewards"] == 3


def test_unit_totals_group_requests_by_unit_and_leave_pinned_ones_out(open_database):
    store = MonitorStore(open_database())
    store.add_records(
        [
            unit_record("r1", "a", "u1", latency_s=0.010),
            unit_record("r2", "a", "u1", latency_s=0.030),
            unit_record("r3", "a", "u1", outcome="error", latency_s=0.5),
            unit_record("r4", "b", None),  # no key: the request is its own unit
            unit_record("r5", "b", None),
            unit_record("r6", "b", "u9", pinned=True),  # a pin is not a random draw
            unit_record("r7", "a", "u1", at=5000.0),  # outside the window
        ]
    )
    store.add_labels([("r1", 1), ("r2", 0), ("r4", 1)])
    totals = store.unit_totals("churn", ["a", "b"], 0, 2000, {})
    rows = {(r.variant, r.unit): r for r in totals.itertuples()}
    assert set(rows) == {("a", "u1"), ("b", "r4"), ("b", "r5")}
    u1 = rows[("a", "u1")]
    assert (u1.requests, u1.failed, u1.answered) == (3, 1, 2)
    assert u1.latency_s == pytest.approx(0.040)
    accuracy = store.unit_accuracy("churn", ["a", "b"], 0, 2000)
    assert sorted((r.variant, r.unit, r.labeled, r.correct) for r in accuracy.itertuples()) == [
        ("a", "u1", 2, 1),
        ("b", "r4", 1, 1),
    ]


def test_what_rollouts_read_outcomes_latencies_and_labeled_counts(open_database):
    store = MonitorStore(open_database())
    store.add_records(
        [
            PredictionRecord("churn:1", 1000.0, "churn", "c", "churn:v2", ["yes", "no"], 0.010),
            PredictionRecord("churn:2", 1001.0, "churn", "c", "churn:v2", [None], 0.300),  # NaN
            PredictionRecord(
                "churn:3", 1002.0, "churn", "c", "churn:v2", [], 0.050, outcome="error"
            ),
            PredictionRecord("churn:4", 1003.0, "churn", "c", "churn:v2", ["no"], 0.200),
            PredictionRecord(
                "churn:5", 1004.0, "churn", "c", "churn:v2", ["yes"], 0.020, pinned=True
            ),
            PredictionRecord("churn:6", 9000.0, "churn", "c", "churn:v2", ["yes"], 0.020),
        ]
    )
    store.add_labels([("churn:1", ["yes", "yes"]), ("churn:4", "no"), ("churn:5", "yes")])
    store.add_labels([("churn:2", ["a", "b"])])  # does not fit its one row: left out
    # requests, failed, invalid, then answers slower than each threshold (None counts none)
    assert store.outcomes("churn", "c", 0, 2000, slower_than=(0.1, None)) == (4, 1, 1, 2, 0)
    assert store.outcomes("churn", "c", 0, 2000, include_pinned=True)[0] == 5
    # answered: churn:1, 2 (a null is an answer), 4 and 6; slowest first; past the fastest: none
    assert store.slowest_latencies("churn", "c", 0, (1, 2, 4, 5)) == pytest.approx(
        {1: 0.3, 2: 0.2, 4: 0.01}
    )
    assert store.slowest_latencies("churn", "c", 0, (1,), include_pinned=True) == {1: 0.3}
    assert store.slowest_latencies("churn", "c", 1003.5, (1, 2)) == {1: 0.02}
    # one row per unit (here per request, none has a key): churn:1's first, yes/yes; no/no
    assert store.labeled_counts("churn", "c", 0, 2000) == (2, 2)
    assert store.labeled_counts("churn", "c", 0, 2000, include_pinned=True) == (3, 3)
    assert store.answered(["churn:1", "churn:3", "churn:9"]) == {"churn:1": ("churn:v2", 2)}
    assert store.newest() == 9000.0


def test_what_rollouts_read_counts_each_unit_once_by_its_first_request(open_database):
    """A routing key's requests count once, by the first in the window; a request without a key
    is its own unit; ``by_request`` counts every request (and every labeled row)."""
    store = MonitorStore(open_database())
    heavy, light = "a" * 32, "b" * 32
    store.add_records(
        [
            PredictionRecord("churn:1", 1000.0, "churn", "c", "m", ["yes"], 0.01, unit=heavy),
            PredictionRecord(
                "churn:2", 1001.0, "churn", "c", "m", [], 0.5, outcome="error", unit=heavy
            ),
            PredictionRecord("churn:3", 1002.0, "churn", "c", "m", ["no"], 0.9, unit=heavy),
            PredictionRecord("churn:4", 1003.0, "churn", "c", "m", ["no", "no"], 0.2, unit=light),
            PredictionRecord("churn:5", 1004.0, "churn", "c", "m", ["yes"], 0.3),
        ]
    )
    store.add_labels([("churn:3", "yes"), ("churn:4", ["no", "yes"]), ("churn:5", "yes")])
    # units: heavy (first: churn:1, ok and fast), light (churn:4), churn:5; slower than 0.1 s
    assert store.outcomes("churn", "c", 0, 2000, (0.1,)) == (3, 0, 0, 2)
    assert store.outcomes("churn", "c", 1000.5, 2000, (0.1,)) == (3, 1, 0, 2)  # heavy: churn:2
    assert store.outcomes("churn", "c", 0, 2000, (0.1,), by_request=True) == (5, 1, 0, 3)
    # each unit's first answer (heavy: churn:1), slowest first; by request, churn:3 too
    assert store.slowest_latencies("churn", "c", 0, (1, 2, 3)) == pytest.approx(
        {1: 0.3, 2: 0.2, 3: 0.01}
    )
    assert store.slowest_latencies("churn", "c", 0, (1, 4), by_request=True) == pytest.approx(
        {1: 0.9, 4: 0.01}
    )
    # labeled: heavy's first labeled row (churn:3, wrong), light's first row (right), churn:5
    assert store.labeled_counts("churn", "c", 0, 2000) == (3, 2)
    assert store.labeled_counts("churn", "c", 0, 2000, by_request=True) == (4, 2)


def test_first_rows_read_every_variant_over_the_same_span(open_database):
    """Each unit by its first answer (its first row), in time order; every variant until the
    first of them has ``max_rows``; with ``inputs``, the input row, units without one left out."""
    store = MonitorStore(open_database())

    def answer(request, at, variant, prediction, unit=None, inputs=None, **more):
        return PredictionRecord(
            f"churn:{request}", at, "churn", variant, "m", prediction, 0.01, unit=unit,
            inputs=inputs, **more,
        )  # fmt: skip

    store.add_records(
        [
            answer("1", 1000.0, "a", ["yes", "no"], "u" * 32, [[1.0], [2.0]]),
            answer("2", 1001.0, "a", ["no"], "u" * 32, [[3.0]]),  # u's second: not read
            answer("3", 1002.0, "a", ["no"], inputs=[[4.0]], pinned=True),
            answer("4", 1003.0, "a", [None], inputs=[[5.0]]),  # not finite: left out
            answer("5", 1004.0, "a", [], outcome="error"),
            answer("6", 1005.0, "a", ["yes"]),  # no inputs sampled
            answer("7", 1006.0, "a", ["no"], inputs=[[6.0]]),
            answer("8", 1002.5, "b", ["no"], inputs=[[7.0]]),
            answer("9", 1005.5, "b", ["yes"], inputs=[[8.0]]),
        ]
    )
    read = store.first_rows("churn", ["a", "b"], 0, 10)
    assert [(r.at, r.prediction, r.inputs) for r in read["a"]] == [
        (1000.0, "yes", None),
        (1005.0, "yes", None),
        (1006.0, "no", None),
    ]
    assert [r.prediction for r in read["b"]] == ["no", "yes"]
    with_inputs = store.first_rows("churn", ["a", "b"], 0, 10, include_pinned=True, inputs=True)
    assert [r.inputs for r in with_inputs["a"]] == [[1.0], [4.0], [6.0]]
    assert store.first_rows("churn", ["a"], 0, 10, by_request=True)["a"][1].at == 1001.0
    same_span = store.first_rows("churn", ["a", "b"], 0, 1)  # a full at 1000.0: b has none then
    assert [r.at for r in same_span["a"]] == [1000.0] and same_span["b"] == []
    same_span = store.first_rows("churn", ["a", "b"], 0, 2)  # a full at 1005.0, b at 1005.5
    assert [r.at for r in same_span["a"]] == [1000.0, 1005.0]
    assert [r.at for r in same_span["b"]] == [1002.5]


def test_first_rows_read_a_share_of_a_variants_units_by_a_hash_of_each(open_database):
    """A unit is read or not by its last 8 hex characters (a key's digest, a request id's
    random part), whatever its time: all of its requests or none."""
    store = MonitorStore(open_database())
    low, high = "0" * 8 + "1" * 8, "0" * 8 + "f" * 8  # 0x11111111 and 0xffffffff
    store.add_records(
        [
            PredictionRecord("churn:1", 1000.0, "churn", "a", "m", ["yes"], 0.01, unit=low),
            PredictionRecord("churn:2", 1001.0, "churn", "a", "m", ["no"], 0.01, unit=high),
            PredictionRecord(f"churn:{'0' * 24}{'2' * 8}", 1002.0, "churn", "a", "m", ["no"], 0.01),
        ]
    )
    half = store.first_rows("churn", ["a"], 0, 10, shares={"a": 0.5})["a"]
    assert [r.at for r in half] == [1000.0, 1002.0]
    assert len(store.first_rows("churn", ["a"], 0, 10, shares={"a": 1.0})["a"]) == 3
    assert store.first_rows("churn", ["a"], 0, 10, shares={"a": 0.0})["a"] == []


def test_a_regressors_right_answers_are_those_within_a_distance_of_their_label(open_database):
    """Rollouts and experiments count a regressor's answers within ``within`` of the label as
    right: a value equal to its label is rare (before, none of 4 counted), a NaN never is."""
    store = MonitorStore(open_database())
    store.add_records(
        [
            PredictionRecord("diab:1", 1000.0, "diab", "c", "diab:v2", [150.0, 90.5], 0.01),
            PredictionRecord("diab:2", 1001.0, "diab", "c", "diab:v2", [None], 0.01),  # NaN
            PredictionRecord("diab:3", 1002.0, "diab", "c", "diab:v2", [200.25], 0.01),
            PredictionRecord("diab:4", 1003.0, "diab", "c", "diab:v2", [-3.0], 0.01),
        ]
    )
    store.add_labels([("diab:1", [160.0, 90.0]), ("diab:2", 10.0), ("diab:3", 180.0)])
    store.add_labels([("diab:4", -13.0)])
    # errors 10 (and 0.5 in diab:1's second row, which rollouts leave out), none (NaN), 20.25, 10
    assert store.labeled_counts("diab", "c", 0, 2000) == (4, 0)
    assert store.labeled_counts("diab", "c", 0, 2000, within=10.0) == (4, 2)
    assert store.labeled_counts("diab", "c", 0, 2000, within=0.5) == (4, 0)
    assert store.labeled_counts("diab", "c", 0, 2000, within=100.0) == (4, 3)
    by_unit = store.unit_accuracy("diab", ["c"], 0, 2000, by_request=True, within=10.0)
    assert sorted(by_unit.itertuples(index=False, name=None)) == [
        ("c", "diab:1", 2, 2),
        ("c", "diab:2", 1, 0),
        ("c", "diab:3", 1, 0),
        ("c", "diab:4", 1, 1),
    ]


def test_a_variants_state_changes_with_every_change_to_what_a_run_reads(open_database):
    """``variant_state`` stays the same while nothing a run reads changed (so the run may keep
    its last analysis), and changes with a record, a label joining (sent before or after its
    record), a pruned label, a pruned record and a record leaving the window by age."""
    store = MonitorStore(open_database())
    store.add_records([record(f"r{i}", ["no"], at=1000.0 + i) for i in range(5)])
    seen = [store.variant_state("churn", "stable", 0.0)]

    def changed() -> bool:
        seen.append(store.variant_state("churn", "stable", 0.0))
        return seen[-1] != seen[-2]

    assert not changed()
    assert store.add_label("r0", "yes") == LabelOutcome.STORED and changed()
    assert store.add_label("r0", "yes") == LabelOutcome.DUPLICATE and not changed()
    assert store.add_label("early", "no") == LabelOutcome.STORED and not changed()  # waits
    store.add_records([record("early", ["no"], at=1002.5)])
    assert changed()
    store.add_records([record("other", ["no"], at=1003.5, variant="candidate")])
    assert not changed()  # another variant's
    store.add_records([record("r1", ["no"], at=1001.0)])
    assert not changed()  # stored before: ignored
    assert store.prune(predictions_before=0, labels_before=10**12, pending_before=0)["labels"]
    assert changed()  # the joined labels pruned
    assert store.prune(predictions_before=1000.5, labels_before=0, pending_before=0)["predictions"]
    assert changed()  # r0 pruned
    assert store.variant_state("churn", "stable", 1001.5) != seen[-1]  # r1 older than the window


def test_a_window_of_numbers_or_of_anything_else_reads_back_as_stored(open_database):
    """Windows of numbers are read as one array; rows of other lengths or values that are not
    numbers as they were stored; a label JSON has no literal for (NaN) reads back too."""
    store = MonitorStore(open_database())
    store.add_records(
        [
            record("a", ["yes"], at=1.0, inputs=[[1.5, None]]),  # None: a value not finite
            record("b", ["no", "no"], at=2.0, inputs=[[2, 3.0], [4, 5]]),
            record("c", ["no"], at=3.0, variant="odd", inputs=[[1.0, "x"]]),
            record("d", ["no"], at=4.0, variant="odd", inputs=[[1.0]]),
        ]
    )
    numbers = store.window("churn", "stable", 10)
    assert numbers.dtypes.tolist() == [np.float64, np.float64, object]
    assert numbers[0].tolist() == [1.5, 2.0, 4.0] and np.isnan(numbers[1][0])
    assert numbers.prediction.tolist() == ["yes", "no", "no"]
    odd = store.window("churn", "odd", 10)
    assert odd[0].tolist() == [1.0, 1.0] and odd[1].tolist()[0] == "x"
    assert store.window("churn", "none", 10).empty
    store.add_label("a", float("nan"))
    assert np.isnan(store.labeled("churn", "stable").label.tolist()[0])
