"""An endpoint's experiment as it stands: running or stopped, since when, and the weights its arms
had when it started (what the sample-ratio test expects). The gateway's admin API writes it into
the shared routing-state store; the monitor reads it to know which window to read out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from traffic.store import StateStore

Status = Literal["running", "stopped"]
RUNNING: Status = "running"
"""Started and not stopped: its window grows with every request."""
STOPPED: Status = "stopped"
"""Its window ends when it was stopped; the readout of that window stays available."""


@dataclass(frozen=True)
class ExperimentState:
    status: Status
    started_at: float
    weights: Mapping[str, float]
    started_by: str
    stopped_at: float | None = None
    stopped_by: str | None = None
    weight_changes: list[dict] = field(default_factory=list)
    """Routing changes while it ran that moved its arms' weights or users between its arms:
    ``{"at", "weights", "by", "moved_users"}`` each (``reassignment`` says what they break)."""
    final: dict | None = None
    """The readout of the whole window, kept once no reward can join it any more (its join
    window after the stop closed; service/monitor/experiments.py): the window's records are
    pruned after that, and its readout stays."""

    def reassignment(self) -> str | None:
        """Why units may have moved between arms during the window, or None: the first routing
        change that moved the arms' shares, or moved users between arms with the shares kept (a
        variant added or removed beside them, a new key or salt). A user keeps the bucket his
        key hashes to, not his arm, so he is then counted in both arms, and each arm's units
        come from different stretches of time."""
        started = _shares(self.weights)
        for change in self.weight_changes:
            if change.get("moved_users") or _shares(change["weights"]) != started:
                return (
                    f"a routing change by {change['by']} at {when(change['at'])} moved users "
                    f"between arms while it ran (their weights {change['weights']}, at the "
                    f"start {dict(self.weights)})"
                )
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ExperimentState:
        return cls(**data)


def load_state(store: StateStore, endpoint: str) -> tuple[int, ExperimentState | None]:
    """(revision, state) of the endpoint's experiment; (0, None) before it was first started."""
    found = store.load_experiment(endpoint)
    return (found[0], ExperimentState.from_dict(found[1])) if found else (0, None)


def when(at: float) -> str:
    """A time for people: ``2026-12-07 12:00:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _shares(weights: Mapping[str, float]) -> dict[str, float]:
    """Each arm's share of the weights, to nine places (50/50 and 1/1 split alike)."""
    total = sum(weights.values())
    return {arm: round(weight / total, 9) if total else 0.0 for arm, weight in weights.items()}
