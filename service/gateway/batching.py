"""An in-process micro-batcher: concurrent requests to one model version run as one batch.

Requests wait in a bounded queue; ``concurrency`` worker tasks each take what is waiting (up to
``max_batch_size`` rows, waiting at most ``max_wait_ms`` for more once a batch has started), stack
the rows, run the model once in a thread (onnxruntime releases the GIL, so the event loop keeps
serving) and hand each caller its own rows back. A model so small that the hop to the thread costs
more than the run itself (the demo's logistic regression: about 10 us a row) is run on the event
loop instead, when its ``RunCost`` (timed when it was loaded, before any traffic: run times measured
under load mostly show the waits for the CPU and the GIL, not the model) says the batch at hand
takes under ``INLINE_RUN_S``.
Batches form by themselves under load, while a batch runs, so the wait can stay at 0 and an idle
gateway adds no latency. A full queue is refused at once with ``Overloaded`` (429 + Retry-After),
never dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service import supervise
from service.errors import InferenceFailed, Overloaded
from service.tensors import Tensors

RunFn = Callable[[Tensors], Tensors]
INLINE_RUN_S = 100e-6
"""A batch predicted to run faster than this runs on the event loop: handing it to a thread and
back costs the loop about as much CPU, and the answer waits for the thread to be scheduled."""
TIMINGS = 3
"""``RunCost.measure`` keeps the fastest of this many runs of each size."""

BatchObserver = Callable[[int, float, list[float]], None]
"""Called after each batch with (rows, seconds spent running it, seconds each request waited in
the queue before the run began)."""


@dataclass(frozen=True)
class RunCost:
    """What one run of a model takes: a fixed part and a part per row."""

    fixed_s: float
    per_row_s: float

    def predict(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows

    @classmethod
    def measure(cls, run: RunFn, inputs_of: Callable[[int], Tensors], rows: int) -> RunCost:
        """Time warm runs of 1 row and of ``rows`` rows (the fastest of a few: nothing else runs
        at load time, so the fastest is the model's own cost) and draw the line through them."""

        def fastest(n: int) -> float:
            inputs, times = inputs_of(n), []
            for _ in range(TIMINGS):
                started = time.perf_counter()
                run(inputs)
                times.append(time.perf_counter() - started)
            return min(times)

        one = fastest(1)
        per_row = max(fastest(rows) - one, 0.0) / (rows - 1) if rows > 1 else 0.0
        return cls(max(one - per_row, 0.0), per_row)


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    future: asyncio.Future
    queued_at: float


class Batcher:
    """Coalesces concurrent ``submit`` calls for one model into batched runs."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        concurrency: int = 1,
        observe_batch: BatchObserver | None = None,
        name: str = "model",
        cost: RunCost | None = None,
    ) -> None:
        """Without a ``cost`` (never measured), every run goes to the thread."""
        self._run = run
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_queue = max_queue
        self._concurrency = concurrency
        self._observe_batch = observe_batch
        self._name = name
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._workers: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix=f"infer-{name}")
        self._cost = cost

    def _start(self) -> asyncio.Queue[_Pending]:
        self._queue = asyncio.Queue(maxsize=self._max_queue)
        self._workers = [  # supervised: a worker that died would leave its callers waiting
            supervise.start(f"batcher {self._name} #{i}", self._work)
            for i in range(self._concurrency)
        ]
        return self._queue

    async def submit(self, inputs: Tensors, rows: int) -> Tensors:
        """Queue one request's rows; returns that request's outputs."""
        queue = self._queue if self._queue is not None else self._start()
        future = asyncio.get_running_loop().create_future()
        try:
            queue.put_nowait(_Pending(inputs, rows, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise Overloaded(
                f"model {self._name} is overloaded: {self._max_queue} requests already queued"
            ) from None
        return await future

    async def _next_batch(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        first = self._carry or await queue.get()
        self._carry = None
        batch, rows = [first], first.rows
        deadline = time.monotonic() + self._max_wait_s
        while rows < self._max_batch_size:
            if queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:  # not the builtin TimeoutError on 3.10
                    break
            else:
                item = queue.get_nowait()
            if rows + item.rows > self._max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert queue is not None
        while True:
            batch = await self._next_batch(queue)
            live = [p for p in batch if not p.future.done()]
            if live:
                await self._serve(loop, live)

    async def _serve(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        """Run a batch and hand each caller its rows. If the run fails, each request is run alone,
        so a request the model cannot take fails by itself and never its batch-mates."""
        try:
            if self._runs_inline(sum(p.rows for p in batch)):
                outputs = self._run_batch(batch)
            else:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, batch)
        except Exception as error:  # a model fault fails its callers, never the worker
            if len(batch) > 1:
                for pending in batch:
                    await self._serve(loop, [pending])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(
                    InferenceFailed(f"model {self._name} failed: {error}")
                )
            return
        for pending, result in zip(batch, outputs):
            if not pending.future.done():
                pending.future.set_result(result)

    def _runs_inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` is predicted to be cheaper to run than to hand over."""
        return self._cost is not None and self._cost.predict(rows) < INLINE_RUN_S

    def _run_batch(self, batch: list[_Pending]) -> list[Tensors]:
        """Stack, run once, split back: in the executor thread, or inline for a tiny model."""
        started = time.perf_counter()
        if len(batch) == 1:
            results = [self._run(batch[0].inputs)]
        else:
            names = batch[0].inputs.keys()
            stacked = {n: np.concatenate([p.inputs[n] for p in batch]) for n in names}
            outputs = self._run(stacked).items()
            results, start = [], 0
            for pending in batch:  # slices by Python ints: numpy's cost twice as much
                end = start + pending.rows
                results.append({n: value[start:end] for n, value in outputs})
                start = end
        seconds, rows = time.perf_counter() - started, sum(p.rows for p in batch)
        if self._observe_batch is not None:
            self._observe_batch(rows, seconds, [started - p.queued_at for p in batch])
        return results

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
