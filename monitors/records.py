"""What the gateway records for every prediction, and the buffer that keeps it off the hot path.

The gateway appends a ``PredictionRecord`` to a ``RecordBuffer`` and goes on: the buffer is bounded
and never blocks; when it is full the record is dropped and counted, so a slow or absent monitor
costs records, never latency. A background task drains it in batches towards the monitor.
"""

from __future__ import annotations

from collections import deque

import msgspec
import numpy as np


class PredictionRecord(msgspec.Struct, frozen=True, gc=False):
    """One answered request: who answered, what it saw (inputs may be sampled out), what it said.

    A msgspec struct: built on every request, so it must be cheap to make (several times cheaper
    than a frozen dataclass), to hold (not tracked by the garbage collector: records never form
    cycles) and to encode and validate in batches. The gateway puts its numpy arrays in as they
    are; they become JSON lists only when a batch is encoded, off the request path.
    """

    request_id: str
    at: float
    endpoint: str
    variant: str
    model: str
    """The registry tag (name:version) of the model that answered."""
    predictions: list
    latency_s: float
    outcome: str = "ok"
    inputs: list[list[float | None]] | None = None
    """The feature rows; None for a NaN or infinity, which JSON cannot carry."""
    shadow: dict[str, list] = {}
    """Shadow variant name -> its predictions for the same rows (shadows that failed are absent)."""


class RecordBatch(msgspec.Struct, frozen=True):
    """What a gateway worker posts to the monitor's ``/records``."""

    records: list[PredictionRecord]


def _plain(value: object) -> object:
    """numpy values as JSON can carry them: arrays as lists, NaN and infinities as None."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return np.where(np.isfinite(value), value, None).tolist()
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise NotImplementedError(f"cannot encode {type(value).__name__} in a record")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


def encode_batch(records: list[PredictionRecord]) -> bytes:
    return _ENCODER.encode(RecordBatch(records))


def decode_batch(body: bytes) -> list[PredictionRecord]:
    """The records in a posted batch; ``ValueError`` saying what is wrong and where otherwise."""
    try:
        return msgspec.json.decode(body, type=RecordBatch).records
    except msgspec.ValidationError as error:
        raise ValueError(f"bad record batch: {error}") from None
    except msgspec.DecodeError as error:
        raise ValueError(f"malformed JSON: {error}") from None


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
