"""What the gateway records for every prediction, and the buffer that keeps it off the hot path.

The gateway appends a ``PredictionRecord`` to a ``RecordBuffer`` and goes on: the buffer is bounded
and never blocks; when it is full the record is dropped and counted, so a slow or absent monitor
costs records, never latency. A background task drains it in batches towards the monitor.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class PredictionRecord:
    """One answered request: who answered, what it saw (inputs may be sampled out), what it said."""

    request_id: str
    at: float
    endpoint: str
    variant: str
    model: str
    """The registry tag (name:version) of the model that answered."""
    predictions: list
    latency_s: float
    outcome: str = "ok"
    inputs: list[list[float]] | None = None
    shadow: dict = field(default_factory=dict)
    """Shadow variant name -> its predictions for the same rows."""

    def to_dict(self) -> dict:
        """A plain dict (``dataclasses.asdict`` deep-copies, which costs on the hot path)."""
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> PredictionRecord:
        return cls(**data)


FIELDS = tuple(f.name for f in fields(PredictionRecord))


class RecordBuffer:
    """A bounded FIFO of records: ``append`` never waits, ``drain`` takes a batch."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._records: deque[PredictionRecord] = deque()
        self._capacity = capacity
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: PredictionRecord) -> bool:
        """Keep the record, or drop and count it when the buffer is full."""
        if len(self._records) >= self._capacity:
            self.dropped += 1
            return False
        self._records.append(record)
        return True

    def drain(self, limit: int) -> list[PredictionRecord]:
        """Up to ``limit`` of the oldest records, removed from the buffer."""
        batch = []
        while self._records and len(batch) < limit:
            batch.append(self._records.popleft())
        return batch

    def requeue(self, batch: list[PredictionRecord]) -> None:
        """Put back a batch that could not be delivered, oldest first, as far as room allows."""
        room = self._capacity - len(self._records)
        kept = batch[:room]
        self.dropped += len(batch) - len(kept)
        self._records.extendleft(reversed(kept))
