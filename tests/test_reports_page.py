"""The reports page for people: newest reports per variant with their summaries, rollout lines,
everything escaped."""

from __future__ import annotations

import time

from monitors.reports import ReportArchive, ReportSummary
from service.monitor.reports_page import newest_reports, reports_page, rollout_line


class Snapshot:
    def save_html(self, path: str) -> None:
        open(path, "w").write("<html><body>report</body></html>")

    def save_json(self, path: str) -> None:
        open(path, "w").write("{}")


def summary(headline: str) -> ReportSummary:
    return ReportSummary(headline, ("feature",), (("x",),))


def test_the_page_shows_the_newest_report_of_each_kind_with_its_summary_and_links(tmp_path):
    archive = ReportArchive(tmp_path)
    archive.save("cancer", "stable", "drift", Snapshot(), summary("0 of 30 features drifted"))
    time.sleep(0.002)
    newest = archive.save("cancer", "stable", "drift", Snapshot(), summary("2 of 30: f1, f2"))
    archive.save("cancer", "candidate", "quality", Snapshot(), summary("accuracy 0.9 vs 0.95"))
    rollouts = {"cancer": {"state": {"candidate": "candidate", "phase": "progressing", "step": 1}}}
    page = reports_page(newest_reports(archive), rollouts, ["cancer", "diabetes"])
    assert "2 of 30: f1, f2" in page and "0 of 30 features drifted" not in page
    assert "accuracy 0.9 vs 0.95" in page
    html_file = next(f for f in newest if f.format == "html")
    assert f'href="/reports/cancer/stable/{html_file.name}"' in page
    assert "rollout of candidate: progressing, step 2" in page
    assert "Endpoint diabetes</h2><p>no rollout policy</p><p>No reports yet" in page
    assert "<script" not in page


def test_names_and_summaries_cannot_inject_markup(tmp_path):
    archive = ReportArchive(tmp_path)
    archive.save("e", "v", "drift", Snapshot(), summary('<script>alert("x")</script>'))
    rollouts = {"e": {"state": {"candidate": "<img src=x>", "phase": "paused", "step": 0}}}
    page = reports_page(newest_reports(archive), rollouts, ["e"])
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x&gt;" in page


def test_rollout_lines():
    assert rollout_line(None) == "no rollout policy"
    assert rollout_line({"state": None}) == "no rollout yet"
    state = {"candidate": "c", "phase": "rolled_back", "step": 0, "reason": "error_rate"}
    assert rollout_line({"state": state}) == "rollout of c: rolled_back, step 1 (error_rate)"
