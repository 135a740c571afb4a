"""The report archive keeps the newest reports per endpoint, variant and kind, and finds only
what is on disk."""

from __future__ import annotations

import time

import pytest

from monitors.reports import ReportArchive


class FakeSnapshot:
    def save_html(self, path: str) -> None:
        open(path, "w").write("<html></html>")

    def save_json(self, path: str) -> None:
        open(path, "w").write("{}")


def test_keeps_the_newest_and_finds_by_name(tmp_path):
    archive = ReportArchive(tmp_path / "reports", keep=2)
    for _ in range(3):
        archive.save("churn", "stable", "drift", FakeSnapshot())
        time.sleep(0.002)
    archive.save("churn", "stable", "quality", FakeSnapshot())
    drift = [f for f in archive.list() if f.kind == "drift"]
    assert len(drift) == 4 and len({f.created for f in drift}) == 2  # html + json, twice
    newest = drift[0]
    assert archive.find("churn", "stable", newest.name).path == newest.path
    assert archive.find("churn", "stable", "../../etc/passwd") is None
    assert newest.to_dict()["path"] == f"churn/stable/{newest.name}"
    with pytest.raises(ValueError):
        archive.save("churn", "stable", "other", FakeSnapshot())
