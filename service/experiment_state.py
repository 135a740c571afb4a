"""An endpoint's experiment as it stands: running or stopped, since when, and the weights its arms
had when it started (what the sample-ratio test expects). The gateway's admin API writes it into
the shared routing-state store; the monitor reads it to know which window to read out.
"""

from __future__ import annotations

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
    """Weights set while it ran (each breaks the sample ratio it expects, so the readout says)."""

    def to_dict(self) -> dict:
        return {**asdict(self), "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ExperimentState:
        return cls(**data)


def load_state(store: StateStore, endpoint: str) -> tuple[int, ExperimentState | None]:
    """(revision, state) of the endpoint's experiment; (0, None) before it was first started."""
    found = store.load_experiment(endpoint)
    return (found[0], ExperimentState.from_dict(found[1])) if found else (0, None)
