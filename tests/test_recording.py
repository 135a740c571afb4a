"""The gateway's recorder without a gateway: what it ships, what it drops, what it retries.

The monitor here is a small real HTTP server on loopback; metrics are mocks (unit test)."""

from __future__ import annotations

import asyncio
import math
from unittest.mock import MagicMock

import numpy as np
import pytest
from aiohttp import web

from monitors.records import PredictionRecord, decode_batch, encode_batch
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
