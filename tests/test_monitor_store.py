"""Records and labels: the bounded buffer never blocks, labels join whichever arrives first,
duplicates are idempotent, conflicts are refused, labels survive a reopen, accuracy is right."""

from __future__ import annotations

import pytest

from monitors.records import PredictionRecord, RecordBuffer
from monitors.store import LabelOutcome, MonitorStore


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


def test_labels_join_whether_they_come_before_or_after(tmp_path):
    store = MonitorStore(tmp_path / "monitor.sqlite3")
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


def test_duplicates_are_idempotent_conflicts_refused_and_labels_durable(tmp_path):
    path = tmp_path / "monitor.sqlite3"
    store = MonitorStore(path)
    assert store.add_label("r1", 1) == LabelOutcome.STORED
    assert store.add_label("r1", 1) == LabelOutcome.DUPLICATE
    assert store.add_label("r1", 0) == LabelOutcome.CONFLICT
    reopened = MonitorStore(path)
    reopened.add_records([record("r1", [1])])
    assert reopened.labeled("churn", "stable").label.tolist() == [1]


def test_unmatched_labels_after_the_retention_window(tmp_path):
    store = MonitorStore(tmp_path / "monitor.sqlite3")
    store.add_label("ghost", 1)
    store.add_label("real", 1)
    store.add_records([record("real", [1])])
    assert store.unmatched_labels(older_than_s=3600) == 0  # still within retention
    assert store.unmatched_labels(older_than_s=3600, now=10**12) == 1


def test_window_returns_the_newest_input_rows_with_predictions(tmp_path):
    store = MonitorStore(tmp_path / "monitor.sqlite3")
    store.add_records(
        [record(f"r{i}", [i], at=1000.0 + i, inputs=[[float(i), 1.0]]) for i in range(10)]
        + [record("other", [9], variant="candidate", inputs=[[9.0, 9.0]])]
    )
    window = store.window("churn", "stable", max_rows=4)
    assert window[0].tolist() == [6.0, 7.0, 8.0, 9.0] and window.prediction.tolist() == [6, 7, 8, 9]
    assert store.add_records([record("r0", [0])]) == 0  # a record seen before is ignored


def test_active_variants_since(tmp_path):
    store = MonitorStore(tmp_path / "monitor.sqlite3")
    store.add_records([record("a", [1], at=10.0), record("b", [1], at=20.0, variant="candidate")])
    assert store.active(since=15.0) == [("churn", "candidate", "churn:v1")]


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
    store = MonitorStore(path)
    assert store.add_records([record("r1", [1])]) == 1
    assert store.add_label("kept", 1) == LabelOutcome.DUPLICATE  # labels are kept


def test_shadow_rows_come_back_beside_the_primary_with_labels_once_joined(tmp_path):
    from monitors.shadow import compare_shadows

    store = MonitorStore(tmp_path / "monitor.sqlite3")
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
