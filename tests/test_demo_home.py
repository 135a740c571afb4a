"""The demo's home: a run starts from empty state, the previous run's kept aside
(service/demo/run.py)."""

from __future__ import annotations

from pathlib import Path

from service.demo.run import set_previous_state_aside


def test_a_new_run_starts_from_empty_state_and_keeps_the_last_one_aside(tmp_path: Path) -> None:
    set_previous_state_aside(tmp_path)  # a first run: nothing to move
    assert not (tmp_path / "data.previous").exists()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "routing.sqlite3").write_text("first run")
    set_previous_state_aside(tmp_path)
    assert not (tmp_path / "data").exists()
    assert (tmp_path / "data.previous" / "routing.sqlite3").read_text() == "first run"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "routing.sqlite3").write_text("second run")
    set_previous_state_aside(tmp_path)  # only the last run is kept
    assert (tmp_path / "data.previous" / "routing.sqlite3").read_text() == "second run"
