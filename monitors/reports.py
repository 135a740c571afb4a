"""The Evidently reports operators open: HTML and JSON per endpoint, variant and kind, kept on disk.

Layout: ``<root>/<endpoint>/<variant>/<kind>-<unix time>.{html,json}``; the newest ``keep`` of each
(endpoint, variant, kind) stay, older ones are deleted. Names are looked up against what is on disk,
never joined from user input, so a request cannot reach outside the archive.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = ("drift", "quality")
NAME = re.compile(r"^(drift|quality)-(\d+)\.(html|json)$")


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

    def save(self, endpoint: str, variant: str, kind: str, snapshot) -> list[ReportFile]:
        """Write ``snapshot`` (an Evidently run result) as HTML and JSON; prune old ones."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        directory = self.root / endpoint / variant
        directory.mkdir(parents=True, exist_ok=True)
        stamp = int(time.time() * 1000)
        snapshot.save_html(str(directory / f"{kind}-{stamp}.html"))
        snapshot.save_json(str(directory / f"{kind}-{stamp}.json"))
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
            match = NAME.match(path.name)
            if match and path.is_file():
                endpoint, variant = path.parent.parent.name, path.parent.name
                found.append(ReportFile(endpoint, variant, match[1], int(match[2]), match[3], path))
        return sorted(found, key=lambda f: f.created, reverse=True)

    def find(self, endpoint: str, variant: str, name: str) -> ReportFile | None:
        for report in self.list():
            if (report.endpoint, report.variant, report.name) == (endpoint, variant, name):
                return report
        return None

    def _prune(self, endpoint: str, variant: str, kind: str) -> None:
        mine = [
            f for f in self.list() if (f.endpoint, f.variant, f.kind) == (endpoint, variant, kind)
        ]
        stamps = sorted({f.created for f in mine}, reverse=True)
        for report in mine:
            if report.created not in stamps[: self.keep]:
                report.path.unlink(missing_ok=True)
