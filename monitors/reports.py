"""The Evidently reports operators open: HTML and JSON per endpoint, variant and kind, kept on disk.

Each report opens with its ``ReportSummary`` (a headline and a table: which features drifted, or
the variant's quality beside the reference's) above Evidently's own rendering, in one document; the
JSON carries the same summary under ``"summary"`` (what the reports page shows).

Layout: ``<root>/<endpoint>/<variant>/<kind>-<unix time>.{html,json}``; the newest ``keep`` of each
(endpoint, variant, kind) stay, older ones are deleted, and none older than a retention the monitor
gives. Reading looks names up against what is on disk, never joins them from a request. Writing
checks that the directory it resolves to lies below the root (a name of ``..`` or an absolute one
is refused, whatever checked it before) and writes each file under a temporary name first, then
renames it, so a reader never sees half a report and a crash leaves no partial one listed.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS = ("drift", "quality", "experiment")
"""Drift and quality: Evidently reports (HTML and JSON); experiment: a readout (JSON)."""
REPORT_NAME = re.compile(r"(drift|quality|experiment)-(\d+)\.(html|json)")


BODY_TAG = re.compile(r"<body[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class ReportSummary:
    """What a report says at a glance: a headline, and a table with one row per column or metric."""

    headline: str
    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]

    def to_dict(self) -> dict:
        return {
            "headline": self.headline,
            "columns": list(self.columns),
            "rows": [list(row) for row in self.rows],
        }

    def html(self) -> str:
        """The summary as an HTML block (every value escaped)."""

        def cells(tag: str, values: Sequence[object]) -> str:
            return "".join(f"<{tag}>{html.escape(_shown(v))}</{tag}>" for v in values)

        rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in self.rows)
        return (
            '<section class="gateway-summary" style="font-family:sans-serif;margin:1em">'
            f"<h2>{html.escape(self.headline)}</h2>"
            f'<table border="1" cellpadding="4" style="border-collapse:collapse">'
            f"<thead><tr>{cells('th', self.columns)}</tr></thead><tbody>{rows}</tbody></table>"
            "</section>"
        )


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def _write_html(snapshot, summary: ReportSummary, path: str) -> None:
    """Evidently's HTML with the summary at the top of its body."""
    snapshot.save_html(path)
    document = Path(path).read_text(encoding="utf-8")
    opening = BODY_TAG.search(document)
    at = opening.end() if opening else 0
    Path(path).write_text(document[:at] + summary.html() + document[at:], encoding="utf-8")


def _write_json(snapshot, summary: ReportSummary, path: str) -> None:
    """Evidently's JSON with the summary beside its metrics."""
    snapshot.save_json(path)
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    Path(path).write_text(json.dumps({"summary": summary.to_dict(), **document}), encoding="utf-8")


@dataclass(frozen=True)
class ReportFile:
    endpoint: str
    variant: str
    kind: str
    created: int
    format: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def to_dict(self) -> dict:
        return {
            "endpoint": self.endpoint,
            "variant": self.variant,
            "kind": self.kind,
            "created": self.created,
            "format": self.format,
            "path": f"{self.endpoint}/{self.variant}/{self.name}",
        }


class ReportArchive:
    def __init__(self, root: Path, keep: int = 10) -> None:
        self.root = root
        self.keep = keep

    def _directory(self, endpoint: str, variant: str) -> Path:
        """``<root>/<endpoint>/<variant>``, refused (ValueError) unless it lies below the root."""
        for part in (endpoint, variant):
            if not part or part in (".", "..") or "/" in part or os.sep in part or "\0" in part:
                raise ValueError(f"{part!r} cannot name a report directory")
        root = self.root.resolve()
        directory = (root / endpoint / variant).resolve()
        if directory.parent.parent != root:
            raise ValueError(f"{endpoint}/{variant} resolves outside the report archive")
        return directory

    def save(
        self, endpoint: str, variant: str, kind: str, snapshot, summary: ReportSummary
    ) -> list[ReportFile]:
        """Write ``snapshot`` (an Evidently run result) as HTML and JSON, each opening with
        ``summary``; prune old ones."""
        writers = {
            "html": lambda path: _write_html(snapshot, summary, path),
            "json": lambda path: _write_json(snapshot, summary, path),
        }
        return self._publish(endpoint, variant, kind, writers)

    def save_document(
        self, endpoint: str, variant: str, kind: str, document: dict, summary: ReportSummary
    ) -> list[ReportFile]:
        """Write a JSON document of our own (an experiment's readout), opening with ``summary``,
        and an HTML page of the summary beside it."""
        text = json.dumps({"summary": summary.to_dict(), **document}, allow_nan=False)
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(summary.headline)}</title></head><body>{summary.html()}"
            "</body></html>"
        )
        writers = {
            "html": lambda path: Path(path).write_text(page, "utf-8"),
            "json": lambda path: Path(path).write_text(text, "utf-8"),
        }
        return self._publish(endpoint, variant, kind, writers)

    def _publish(
        self, endpoint: str, variant: str, kind: str, writers: dict[str, Callable[[str], None]]
    ) -> list[ReportFile]:
        """Each format written to a temporary file and renamed into place (a reader never sees
        half a report); then the oldest beyond ``keep`` go."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        directory = self._directory(endpoint, variant)
        directory.mkdir(parents=True, exist_ok=True)
        stamp = int(time.time() * 1000)
        for fmt, write in writers.items():
            final = directory / f"{kind}-{stamp}.{fmt}"
            partial = directory / f".{final.name}.partial"
            try:
                write(str(partial))
                os.replace(partial, final)
            finally:
                partial.unlink(missing_ok=True)
        self._prune(endpoint, variant, kind)
        return [
            f
            for f in self.list()
            if f.created == stamp
            and f.kind == kind
            and f.endpoint == endpoint
            and f.variant == variant
        ]

    def list(self) -> list[ReportFile]:
        """Every report on disk, newest first."""
        found = []
        if not self.root.is_dir():
            return found
        for path in self.root.glob("*/*/*"):
            match = REPORT_NAME.fullmatch(path.name)
            if match and path.is_file():
                endpoint, variant = path.parent.parent.name, path.parent.name
                found.append(ReportFile(endpoint, variant, match[1], int(match[2]), match[3], path))
        return sorted(found, key=lambda f: f.created, reverse=True)

    def summary(self, report: ReportFile) -> dict | None:
        """The summary a JSON report opens with (None for an older report without one)."""
        try:
            return json.loads(report.path.read_text(encoding="utf-8")).get("summary")
        except (OSError, ValueError):
            return None

    def find(self, endpoint: str, variant: str, name: str) -> ReportFile | None:
        for report in self.list():
            if (report.endpoint, report.variant, report.name) == (endpoint, variant, name):
                return report
        return None

    def prune_older_than(self, seconds: float, now: float | None = None) -> int:
        """Delete reports older than ``seconds`` (retention); returns how many files went."""
        cutoff_ms = ((now or time.time()) - seconds) * 1000
        old = [f for f in self.list() if f.created < cutoff_ms]
        for report in old:
            report.path.unlink(missing_ok=True)
        return len(old)

    def _prune(self, endpoint: str, variant: str, kind: str) -> None:
        mine = [
            f for f in self.list() if (f.endpoint, f.variant, f.kind) == (endpoint, variant, kind)
        ]
        stamps = sorted({f.created for f in mine}, reverse=True)
        for report in mine:
            if report.created not in stamps[: self.keep]:
                report.path.unlink(missing_ok=True)
