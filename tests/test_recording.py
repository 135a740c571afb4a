"""The gateway's recorder without a gateway: what it ships, what it drops, what it retries.

The monitor here is a small real HTTP server on loopback; metrics are mocks (unit test)."""

from __future__ import annotations

import asyncio
import math
import random
from unittest.mock import MagicMock

import numpy as np
import pytest
from aiohttp import web

from monitors.records import (
    InputSampler,
    PredictionRecord,
    decode_batch,
    encode_batch,
    not_after,
)
from service.config import MonitorConfig
from service.gateway.recording import Recorder
from tests.helpers import loopback_receiver


def test_numpy_arrays_are_shipped_as_lists_with_nan_and_infinities_as_none():
    record = PredictionRecord(
        "r1",
        1.5,
        "cancer",
        "stable",
        "cancer:v1",
        np.array(["benign"], dtype=object),
        0.002,
        inputs=np.array([[1.0, math.nan], [math.inf, 2.0]], dtype=np.float32),
    )
    (shipped,) = decode_batch(encode_batch([record]))
    assert shipped.inputs == [[1.0, None], [None, 2.0]] and shipped.predictions == ["benign"]
    integers = PredictionRecord(
        "r2", 1.5, "e", "v", "m:v1", np.array([3]), 0.1, inputs=np.ones((1, 2), dtype=np.int64)
    )
    assert decode_batch(encode_batch([integers]))[0].inputs == [[1.0, 1.0]]


def test_a_batch_survives_encoding_and_bad_batches_say_where():
    record = PredictionRecord(
        "r1",
        1.5,
        "cancer",
        "stable",
        "cancer:v1",
        ["benign"],
        0.002,
        inputs=[[1.0, None]],
        shadow={"mirror": ["malignant"]},
    )
    assert decode_batch(encode_batch([record])) == [record]
    with pytest.raises(ValueError, match=r"\$\.records\[0\]\.at"):
        decode_batch(b'{"records": [{"request_id": "r", "at": "noon"}]}')
    with pytest.raises(ValueError, match="malformed JSON"):
        decode_batch(b"{")
    with pytest.raises(ValueError, match="nested too deeply"):  # in a field it would skip
        decode_batch(b'{"a":' * 3000 + b"1" + b"}" * 3000)


async def shipping(answers: list[int], records: int) -> tuple[list[int], Recorder]:
    """Run a recorder against a monitor answering ``answers`` in turn; returns batch sizes seen."""
    seen: list[int] = []

    async def take(request: web.Request) -> web.Response:
        seen.append(len(decode_batch(await request.read())))
        status = answers[min(len(seen), len(answers)) - 1]
        return web.json_response({"stored": seen[-1]}, status=status)

    url, cleanup = await loopback_receiver("/records", take)
    config = MonitorConfig(
        url=url.removesuffix("/records"), flush_interval_ms=20, batch_records=100
    )
    recorder = Recorder(config, MagicMock(), "token-of-this-test-gateway")
    for i in range(records):
        recorder.buffer.append(PredictionRecord(f"r{i}", 1.0, "e", "v", "m:v1", [0], 0.001))
    task = asyncio.create_task(recorder.ship_forever())
    await asyncio.sleep(0.5)
    task.cancel()
    await cleanup()
    return seen, recorder


async def test_a_refused_batch_is_dropped_and_counted_not_sent_forever():
    seen, recorder = await shipping([400, 200], records=150)
    assert seen == [100, 50]  # the refused batch once, then the rest
    assert len(recorder.buffer) == 0
    recorder.metrics.monitor_dropped.inc.assert_called_once_with(100)


async def test_a_failing_monitor_gets_the_same_records_again():
    seen, recorder = await shipping([503, 200], records=150)
    assert seen[:3] == [100, 100, 50]  # the batch came back and went again
    assert len(recorder.buffer) == 0
    assert all(call.args == (0,) for call in recorder.metrics.monitor_dropped.inc.call_args_list)


async def test_a_monitor_refusing_the_token_keeps_the_records_for_later():
    seen, recorder = await shipping([401, 200], records=150)
    assert seen[:3] == [100, 100, 50]  # a misconfigured token is not a reason to drop records
    assert all(call.args == (0,) for call in recorder.metrics.monitor_dropped.inc.call_args_list)


class Traffic:
    """Requests at a steady rate on a clock of their own; what an ``InputSampler`` kept. Its draws
    come from a seeded generator, so each run of a test sees the same sample."""

    def __init__(self, sampler_of) -> None:
        self.now = 0.0
        self.draws = random.Random(20261128)
        self.sampler = sampler_of(lambda: self.now, self.draws.random)

    def send(self, seconds: float, per_s: float, rows: int = 1, variant="stable") -> list[float]:
        """Times (since the start) of the requests whose inputs were kept."""
        kept, start = [], self.now
        for i in range(round(seconds * per_s)):
            self.now = start + i / per_s
            if self.sampler.keep(("cancer", variant), rows):
                kept.append(self.now)
        self.now = start + seconds
        return kept


def test_no_record_is_stamped_after_its_batch_arrived():
    def answered(at: float) -> PredictionRecord:
        return PredictionRecord("e:1", at, "e", "stable", "m:v1", [1], 0.001)

    records = not_after([answered(90.0), answered(100.0), answered(1e12)], arrived_at=100.0)
    assert [r.at for r in records] == [90.0, 100.0, 100.0]
    assert records[2] == answered(100.0)


def test_inputs_below_the_cap_are_all_kept():
    traffic = Traffic(lambda clock, draw: InputSampler(1.0, 1000, clock, draw))
    assert len(traffic.send(5, 500)) == 2500


def test_above_the_cap_a_random_share_holds_the_rate_whatever_the_rows_per_request():
    for rows, per_s in ((1, 10_000), (64, 200)):
        traffic = Traffic(lambda clock, draw: InputSampler(1.0, 1000, clock, draw))
        kept = np.array(traffic.send(60, per_s, rows))
        first = kept < 1.0
        assert first.sum() == per_s  # the first second keeps all: no rate measured yet
        later = kept[~first]  # 64-row requests: about 920 of them, so 10% is 3 standard deviations
        assert len(later) * rows / 59 == pytest.approx(1000, rel=0.1)
        # drawn request by request, not the first ones of each second
        assert np.mean(later % 1.0) == pytest.approx(0.5, abs=0.05)
        assert np.histogram(later % 1.0, bins=4)[0].min() > 0.8 * len(later) / 4


def test_each_variant_has_its_own_cap_and_a_quiet_canary_keeps_everything():
    traffic = Traffic(lambda clock, draw: InputSampler(1.0, 1000, clock, draw))
    stable, canary = [], []
    for _ in range(10 * 50):  # 10 s: stable at 5,000 requests a second, the canary at 50
        stable += traffic.send(0.02, 5000)
        canary += traffic.send(1e-9, 1e9, variant="canary")  # one request
    assert len(canary) == 500
    assert len([t for t in stable if t >= 1.0]) / 9 == pytest.approx(1000, rel=0.1)


def test_the_share_applies_first_and_the_cap_to_what_it_keeps():
    for cap, share, per_s in ((None, 0.5, 5000), (1000, 0.5, 1000), (1000, 0.05, 500)):
        traffic = Traffic(
            lambda clock, draw, cap=cap, share=share: InputSampler(share, cap, clock, draw)
        )
        kept = [t for t in traffic.send(20, 10_000) if t >= 1.0]
        assert len(kept) / 19 == pytest.approx(per_s, rel=0.06), (cap, share)
