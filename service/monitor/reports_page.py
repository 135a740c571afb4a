"""``GET /reports`` for people: one HTML page with, per endpoint, its rollout's state and, per
variant, the newest drift and quality report's summary line with links to open them.

Served where a browser asks for HTML (service/http/query.py ``wants_html``); clients get the JSON
listing as before. Everything shown is escaped, and the page runs no script (its
Content-Security-Policy forbids any), so a name or a summary can never inject one. Links are
absolute paths under ``/reports/``, which the gateway and the monitor both serve, so the page works
through either.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence

from monitors.reports import ReportArchive, ReportFile

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    ".drifted{color:#b00}"
)


def newest_reports(archive: ReportArchive) -> list[tuple[ReportFile, ReportFile | None, dict]]:
    """Per (endpoint, variant, kind), the newest HTML report, its JSON twin and its summary."""
    files = archive.list()  # newest first
    twins = {(f.endpoint, f.variant, f.kind, f.created): f for f in files if f.format == "json"}
    newest, seen = [], set()
    for report in files:
        key = (report.endpoint, report.variant, report.kind)
        if report.format != "html" or key in seen:
            continue
        seen.add(key)
        twin = twins.get((*key, report.created))
        summary = (archive.summary(twin) if twin is not None else None) or {}
        newest.append((report, twin, summary))
    return sorted(newest, key=lambda item: (item[0].endpoint, item[0].variant, item[0].kind))


def rollout_line(described: Mapping | None) -> str:
    """One line on an endpoint's rollout (``RolloutService.describe``'s answer)."""
    if described is None:
        return "no rollout policy"
    state = described.get("state")
    if state is None:
        return "no rollout yet"
    line = f"rollout of {state.get('candidate')}: {state.get('phase')}, step {state.get('step', 0) + 1}"
    if state.get("reason"):
        line += f" ({state['reason']})"
    return line


def reports_page(
    newest: Sequence[tuple[ReportFile, ReportFile | None, dict]],
    rollouts: Mapping[str, Mapping],
    endpoints: Sequence[str],
) -> str:
    """The whole page."""
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>Gateway reports</title><style>{STYLE}</style></head><body>",
        "<h1>Gateway reports</h1>",
    ]
    for endpoint in endpoints:
        e = html.escape(endpoint)
        parts.append(f"<h2>Endpoint {e}</h2>")
        parts.append(f"<p>{html.escape(rollout_line(rollouts.get(endpoint)))}</p>")
        rows = [item for item in newest if item[0].endpoint == endpoint]
        if not rows:
            parts.append("<p>No reports yet (a variant needs a window of traffic).</p>")
            continue
        parts.append(
            "<table><thead><tr><th>variant</th><th>report</th><th>summary</th><th>saved</th>"
            "<th>open</th></tr></thead><tbody>"
        )
        for report, twin, summary in rows:
            parts.append(_row(report, twin, summary))
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)


def _row(report: ReportFile, twin: ReportFile | None, summary: Mapping) -> str:
    headline = str(summary.get("headline") or "(no summary in this report)")
    drifted = report.kind == "drift" and not headline.startswith("0 of")
    saved = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.created / 1000))
    links = [f'<a href="/reports/{html.escape(report.to_dict()["path"])}">HTML</a>']
    if twin is not None:
        links.append(f'<a href="/reports/{html.escape(twin.to_dict()["path"])}">JSON</a>')
    css = ' class="drifted"' if drifted else ""
    return (
        f"<tr><td>{html.escape(report.variant)}</td><td>{report.kind}</td>"
        f"<td{css}>{html.escape(headline)}</td><td>{saved}</td><td>{' '.join(links)}</td></tr>"
    )
