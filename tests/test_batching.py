"""The batcher: concurrent requests share runs, each caller gets its own rows, overload is refused."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.errors import InferenceFailed, Overloaded
from service.gateway.batching import Batcher, RunCost


class RecordingModel:
    """Doubles its input; records the batch sizes it saw; optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, inputs):
        self.threads.add(threading.current_thread().name)
        x = inputs["x"]
        self.batches.append(len(x))
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("bad row")
        time.sleep(self.delay_s)
        return {"y": x * 2}


async def test_concurrent_requests_are_batched_and_split_back():
    model = RecordingModel(delay_s=0.01)
    batcher = Batcher(model, max_batch_size=64, max_wait_ms=0, max_queue=100)
    rows = [np.full((1 + i % 3, 2), i, np.float32) for i in range(40)]
    results = await asyncio.gather(*(batcher.submit({"x": r}, len(r)) for r in rows))
    for r, result in zip(rows, results):
        np.testing.assert_array_equal(result["y"], r * 2)
    assert sum(model.batches) == sum(len(r) for r in rows)
    assert len(model.batches) < 40 / 2  # stacked, not one run per request
    assert max(model.batches) <= 64
    await batcher.close()


ONE_ROW = {"x": np.ones((1, 1))}


def loop_thread_only(model: RecordingModel) -> bool:
    return model.threads == {threading.current_thread().name}


async def test_a_model_slower_than_a_thread_hop_at_warm_up_runs_off_the_event_loop_thread():
    model = RecordingModel()
    batcher = Batcher(model, max_batch_size=8, max_wait_ms=0, max_queue=10, cost=RunCost(1e-3, 0.0))
    for _ in range(5):
        await batcher.submit(ONE_ROW, 1)
    assert threading.current_thread().name not in model.threads
    await batcher.close()


def test_run_cost_is_the_line_through_the_fastest_runs_of_one_row_and_a_full_batch():
    def run(inputs):
        time.sleep(0.002 + 0.0001 * len(inputs["x"]))
        return {}

    cost = RunCost.measure(run, lambda rows: {"x": np.zeros((rows, 1))}, 64)
    assert cost.fixed_s == pytest.approx(0.002, abs=5e-4)
    assert cost.per_row_s == pytest.approx(0.0001, rel=0.2)
    assert cost.predict(32) == pytest.approx(0.002 + 0.0032, rel=0.15)


async def test_a_batch_predicted_too_big_for_the_loop_goes_to_the_thread():
    model = RecordingModel()
    batcher = Batcher(model, max_batch_size=64, max_wait_ms=0, max_queue=10, cost=RunCost(0, 2e-6))
    await batcher.submit({"x": np.ones((8, 1))}, 8)  # 16 us predicted: inline
    assert loop_thread_only(model)
    model.threads.clear()
    await batcher.submit({"x": np.ones((64, 1))}, 64)  # 128 us predicted: the thread
    assert threading.current_thread().name not in model.threads
    await batcher.close()


async def test_a_model_never_timed_runs_off_the_event_loop_thread():
    model = RecordingModel()
    batcher = Batcher(model, max_batch_size=8, max_wait_ms=0, max_queue=10)
    for _ in range(5):
        await batcher.submit(ONE_ROW, 1)
    assert threading.current_thread().name not in model.threads
    await batcher.close()


async def test_a_tiny_model_runs_inline():
    model = RecordingModel()
    batcher = Batcher(model, max_batch_size=8, max_wait_ms=0, max_queue=10, cost=RunCost(2e-5, 0.0))
    for _ in range(3):
        await batcher.submit(ONE_ROW, 1)
    assert loop_thread_only(model)  # cheaper inline than handed over, from the first request
    await batcher.close()


async def test_batches_never_exceed_max_rows():
    model = RecordingModel(delay_s=0.005)
    batcher = Batcher(model, max_batch_size=10, max_wait_ms=0, max_queue=100)
    await asyncio.gather(*(batcher.submit({"x": np.ones((4, 1))}, 4) for _ in range(20)))
    assert max(model.batches) <= 10 and sum(model.batches) == 80
    await batcher.close()


async def test_max_wait_lets_a_batch_fill():
    model = RecordingModel()
    batcher = Batcher(model, max_batch_size=8, max_wait_ms=50, max_queue=100)

    async def later(i):
        await asyncio.sleep(0.005 * i)
        return await batcher.submit({"x": np.ones((1, 1))}, 1)

    await asyncio.gather(*(later(i) for i in range(4)))
    assert model.batches == [4]
    await batcher.close()


async def test_full_queue_is_refused_with_retry_after_never_dropped():
    model = RecordingModel(delay_s=0.05)
    batcher = Batcher(model, max_batch_size=1, max_wait_ms=0, max_queue=3)
    outcomes = await asyncio.gather(
        *(batcher.submit({"x": np.ones((1, 1))}, 1) for _ in range(10)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if isinstance(o, dict)]
    assert refused and served and len(refused) + len(served) == 10
    assert refused[0].headers["Retry-After"] == "1"
    await batcher.close()


async def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    model = RecordingModel(fail_on=7.0)
    batcher = Batcher(model, max_batch_size=1, max_wait_ms=0, max_queue=10)
    with pytest.raises(InferenceFailed, match="bad row"):
        await batcher.submit({"x": np.full((1, 1), 7.0)}, 1)
    result = await batcher.submit({"x": np.ones((1, 1))}, 1)
    np.testing.assert_array_equal(result["y"], [[2.0]])
    await batcher.close()


async def test_a_request_the_model_fails_on_does_not_fail_its_batch_mates():
    model = RecordingModel(delay_s=0.005, fail_on=7.0)
    batcher = Batcher(model, max_batch_size=64, max_wait_ms=5, max_queue=100)
    values = [1.0, 2.0, 7.0, 3.0, 4.0]
    results = await asyncio.gather(
        *(batcher.submit({"x": np.full((2, 1), v)}, 2) for v in values), return_exceptions=True
    )
    assert max(model.batches) > 2, "the requests were batched together first"
    for value, result in zip(values, results):
        if value == 7.0:
            assert isinstance(result, InferenceFailed)
        else:
            np.testing.assert_array_equal(result["y"], np.full((2, 1), value * 2))
    await batcher.close()
