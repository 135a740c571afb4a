"""What the gateway records for every prediction, and the buffer that keeps it off the hot path.

The gateway appends a ``PredictionRecord`` to a ``RecordBuffer`` and goes on: the buffer is bounded
and never blocks; when it is full the record is dropped and counted, so a slow or absent monitor
costs records, never latency. A background task drains it in batches towards the monitor.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Hashable

import msgspec
import numpy as np


class PredictionRecord(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One answered request: who answered, what it saw (inputs may be sampled out), what it said.

    A msgspec struct: built on every request, so it must be cheap to make (several times cheaper
    than a frozen dataclass), to hold (not tracked by the garbage collector: records never form
    cycles) and to encode and validate in batches. The gateway puts its numpy arrays in as they
    are; they become JSON lists only when a batch is encoded, off the request path. Fields at
    their defaults are left out of the JSON (9% of a typical record) and filled in on decoding.
    """

    request_id: str
    """The gateway's own id for this answer (unguessable); labels name it."""
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
    correlation_id: str | None = None
    """The caller's own ``x-request-id``, kept as it came (callers may reuse one)."""
    pinned: bool = False
    """The caller chose the variant (a pin), so the request is not a random draw of traffic."""
    unit: str | None = None
    """Who sent it: the hex digest of its salted routing key (experiments count units by it);
    None for a request without a key, which is its own unit."""


ELEMENT_BYTES = 24
"""What one number or short label weighs in an encoded record, at most (JSON text)."""
RECORD_OVERHEAD_BYTES = 400


def encoded_size(record: PredictionRecord) -> int:
    """An upper estimate of the record's encoded size, cheap enough for the request path."""
    elements = len(record.predictions) + sum(len(p) for p in record.shadow.values())
    if record.inputs is not None:
        inputs = record.inputs
        elements += inputs.size if isinstance(inputs, np.ndarray) else len(inputs) * 64
    return RECORD_OVERHEAD_BYTES + ELEMENT_BYTES * elements


class RecordBatch(msgspec.Struct, frozen=True):
    """What a gateway worker posts to the monitor's ``/records``."""

    records: list[PredictionRecord]


def _plain(value: object) -> object:
    """numpy values as lists and scalars; msgspec writes NaN and infinities as null (None)."""
    if isinstance(value, np.ndarray):
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
    except RecursionError:  # thousands of nested objects, even in a field it skips
        raise ValueError("malformed JSON: nested too deeply") from None


def not_after(records: list[PredictionRecord], arrived_at: float) -> list[PredictionRecord]:
    """The records, each stamped no later than ``arrived_at`` (when its batch arrived, on the
    receiver's clock): none was answered after it arrived. A record stamped ahead, by a sender
    whose clock runs fast, would wait outside the windows that are read until that time came,
    in every window after, and past every pruning until its retention ran out from that time."""
    return [
        record if record.at <= arrived_at else msgspec.structs.replace(record, at=arrived_at)
        for record in records
    ]


class RecordBuffer:
    """A FIFO of records bounded in number and in (estimated) bytes: ``append`` never waits,
    ``drain`` takes a batch no heavier than asked, so one request of thousands of rows cannot
    make a batch the monitor refuses or a buffer that eats the worker's memory."""

    def __init__(self, capacity: int, capacity_bytes: int = 2**62) -> None:
        if capacity < 1 or capacity_bytes < 1:
            raise ValueError("capacities must be at least 1")
        self._records: deque[tuple[PredictionRecord, int]] = deque()
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        return len(self._records) < self._capacity and self._bytes + size <= self._capacity_bytes

    def append(self, record: PredictionRecord) -> bool:
        """Keep the record, or drop and count it when the buffer is full."""
        size = encoded_size(record)
        if not self._fits(size):
            self.dropped += 1
            return False
        self._records.append((record, size))
        self._bytes += size
        return True

    def drain(self, limit: int, limit_bytes: int = 2**62) -> list[PredictionRecord]:
        """The oldest records, removed from the buffer: at most ``limit`` of them and, but for
        the first (which always goes, however big), at most ``limit_bytes`` in all."""
        batch, weight = [], 0
        while self._records and len(batch) < limit:
            record, size = self._records[0]
            if batch and weight + size > limit_bytes:
                break
            self._records.popleft()
            self._bytes -= size
            batch.append(record)
            weight += size
        return batch

    def requeue(self, batch: list[PredictionRecord]) -> None:
        """Put back a batch that could not be delivered, oldest first, as far as room allows."""
        kept, room, room_bytes = [], self._capacity - len(self._records), self._capacity_bytes
        room_bytes -= self._bytes
        for record in batch:
            size = encoded_size(record)
            if len(kept) == room or size > room_bytes:
                break
            kept.append((record, size))
            room_bytes -= size
        self.dropped += len(batch) - len(kept)
        self._records.extendleft(reversed(kept))
        self._bytes += sum(size for _, size in kept)


class _Offered:
    """One variant's input rows offered since ``since``, and each request's chance meanwhile."""

    __slots__ = ("since", "rows", "probability")

    def __init__(self, since: float) -> None:
        self.since, self.rows, self.probability = since, 0, 1.0


class InputSampler:
    """Which answered requests keep their inputs in their record: a random ``share`` of them,
    thinned further per variant so that each keeps at most about ``rows_per_s`` input rows a
    second (None: no such cap).

    Inputs are most of a record's weight and of what shipping and storing it costs (a 1-row record
    of 30 features: 730 bytes, 560 of them the inputs; a 64-row request's record 35 KB), and what
    reads them are statistics over a window of at most ``window_rows`` rows (drift, attribution,
    reports), for which a random sample of the traffic is as good as all of it. The thinning for
    the coming second follows the rows the share kept of the variant's traffic in the last one,
    drawn request by request: which requests keep their inputs depends neither on what they hold
    nor on when in the second they came, and a variant with less traffic keeps the whole share.
    """

    def __init__(
        self,
        share: float,
        rows_per_s: float | None,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._share = share
        self._rows_per_s = rows_per_s
        self._clock = clock
        self._draw = draw
        self._offered: dict[Hashable, _Offered] = {}

    def keep(self, variant: Hashable, rows: int) -> bool:
        """Whether a request of ``rows`` rows answered by ``variant`` keeps its inputs."""
        if self._rows_per_s is None:
            return self._draw() < self._share
        now = self._clock()
        offered = self._offered.get(variant)
        if offered is None:
            offered = self._offered[variant] = _Offered(now)
        elif now - offered.since >= 1.0:
            shared_per_s = self._share * offered.rows / (now - offered.since)
            offered.probability = min(1.0, self._rows_per_s / shared_per_s) if shared_per_s else 1.0
            offered.since, offered.rows = now, 0
        offered.rows += rows
        return self._draw() < self._share * offered.probability
