"""The report archive keeps the newest reports per endpoint, variant and kind, and finds only
what is on disk."""

from __future__ import annotations

import json
import time

import pytest

from monitors.reports import ReportArchive, ReportSummary


class FakeSnapshot:
    """Writes what Evidently's run results write, in miniature."""

    def save_html(self, path: str) -> None:
        open(path, "w").write(
            '<html><head></head><body class="x"><div id="evidently"></div></body></html>'
        )

    def save_json(self, path: str) -> None:
        open(path, "w").write('{"metrics": [1, 2]}')


SUMMARY = ReportSummary(
    "1 of 2 features drifted: <b>", ("feature", "score", "drifted"), (("<b>", 0.25, True),)
)


def test_keeps_the_newest_and_finds_by_name(tmp_path):
    archive = ReportArchive(tmp_path / "reports", keep=2)
    for _ in range(3):
        archive.save("churn", "stable", "drift", FakeSnapshot(), SUMMARY)
        time.sleep(0.002)
    archive.save("churn", "stable", "quality", FakeSnapshot(), SUMMARY)
    drift = [f for f in archive.list() if f.kind == "drift"]
    assert len(drift) == 4 and len({f.created for f in drift}) == 2  # html + json, twice
    newest = drift[0]
    assert archive.find("churn", "stable", newest.name).path == newest.path
    assert archive.find("churn", "stable", "../../etc/passwd") is None
    assert newest.to_dict()["path"] == f"churn/stable/{newest.name}"
    with pytest.raises(ValueError):
        archive.save("churn", "stable", "other", FakeSnapshot(), SUMMARY)


def test_a_report_opens_with_its_summary_above_evidentlys_own_in_one_document(tmp_path):
    archive = ReportArchive(tmp_path / "reports")
    files = {f.format: f for f in archive.save("churn", "stable", "drift", FakeSnapshot(), SUMMARY)}
    document = files["html"].path.read_text()
    summary_at = document.index('<section class="gateway-summary"')
    assert document.index('<body class="x">') < summary_at < document.index('id="evidently"')
    assert "<b>" not in document and "&lt;b&gt;" in document  # names are escaped
    assert "<td>0.25</td><td>yes</td>" in document
    assert archive.summary(files["json"]) == SUMMARY.to_dict()
    assert json.loads(files["json"].path.read_text())["metrics"] == [1, 2]
