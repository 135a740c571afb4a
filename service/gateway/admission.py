"""Admission of predictions under overload: keep accepted ones within the SLO, refuse the rest.

``Admission`` is an adaptive concurrency limit in the manner of Netflix's concurrency-limits, run on
time: every ``WINDOW_S`` it compares the 90th percentile of the latency of the predictions it
admitted with the budget and shrinks the limit in proportion when they took too long, or grows it
while it is what holds traffic back and they are well within (past where it started, only while they
barely queue: there more calls in flight add waiting, not answers). The budget is a sixth of
``server.latency_slo_ms`` unless ``admission.queue_budget_ms`` says otherwise: what the gate
measures starts once a request reaches it, and under a spike the time before (the socket, the
HTTP parser, an event loop busy with refusals) is several times what it measures (at 1,024
callers here a budget of a third gave a p99 of 210 ms at the client, a sixth about 50 ms;
BENCHMARKS.md). It never goes below ``SERVICE_FACTOR`` times the model's own time (the fastest
admitted call of a window, smoothed): a model slower than the budget is served at its own pace,
not refused down to ``min_concurrency``. service/gateway/http/gate.py asks it before a
prediction's body is read, and holds each refusal for a moment first (longer the more callers are
being refused), so that callers that retry at once cannot turn refusals into the work that starves
accepted requests. ``Retry-After`` is the time the current backlog takes to drain.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable

OVERLOAD = "overload"
"""The reason a prediction is refused, or optional work shed, while admission has no room
(``gateway_shed_requests_total{reason}``)."""
WINDOW_S = 0.1
"""How often the limit is adjusted (and the window of latencies it looks at)."""
SHED_MEMORY_S = 1.0
"""After a refusal, shadows and sampled inputs are skipped this long (shed before answers)."""
SERVICE_FACTOR = 2.0
"""The budget is never below this many times the time an admitted call takes with no queue."""
START_LIMIT = 64
"""Where the limit starts (within its bounds): enough calls in flight to keep a worker busy (64
callers here run a worker at capacity)."""
GROW_BELOW = 0.7
"""Below its start, the limit grows back while admitted calls' p90 is under this share of the
budget: a slow moment that shrank it should not leave callers refused once calls are fast again."""
GROW_BELOW_PAST_START = 0.35
"""Past its start, it grows only while their p90 is under this share. Calls that take longer are
queueing in a busy worker: more in flight adds waiting, not answers (at 1,024 callers goodput was
the same with at most 32 in flight as with 1,024), and every call in flight is one more answer late
when the worker or its client stalls (at 1,024 callers a Python client's collector, pausing it
for 130-175 ms a few times a run, put 0.5-1.1% of the answers past 100 ms with this share at 0.7,
0.2-0.5% with it at 0.35; BENCHMARKS.md)."""


class Admission:
    """One worker's concurrency limit for predictions, adapted to keep them within a time budget."""

    def __init__(
        self,
        budget_s: float,
        min_limit: int,
        max_limit: int,
        max_refusals_per_s: float,
        max_hold_s: float,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        on_limit: Callable[[float], None] = lambda limit: None,
    ) -> None:
        self.budget_s = budget_s
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.max_refusals_per_s = max_refusals_per_s
        self.max_hold_s = max_hold_s
        """The longest a refusal is held: a caller that times out sooner sees no 429."""
        self.clock = clock
        self.draw = draw
        """Uniform in [0, 1): where in its range a hold at the cap falls."""
        self.on_limit = on_limit
        """Told the limit after each adjustment (the gateway exports it)."""
        self.start = float(min(max_limit, max(min_limit, START_LIMIT)))
        self.limit = self.start
        self.in_flight = 0
        self.held = 0
        self.throughput = 0.0
        """Completions per second, smoothed over windows."""
        self.service_s = 0.0
        """The time a call takes with no queue: each window's fastest, smoothed."""
        self._latencies: list[float] = []
        self._window_start = clock()
        self._limited = False
        self._last_refusal = -math.inf

    @property
    def shedding(self) -> bool:
        """Whether predictions were refused lately: optional work (shadows, sampled inputs)
        waits."""
        return self.clock() - self._last_refusal < SHED_MEMORY_S

    def admit(self) -> bool:
        """Take a slot for a prediction, or say no (the caller then ``refuse``s)."""
        if self.in_flight < int(self.limit):
            self.in_flight += 1
            return True
        self._limited = True
        self._last_refusal = self.clock()
        return False

    def release(self) -> None:
        """Give back a slot taken for a call that will ask again later (its body is still
        arriving): nothing is learnt from it."""
        self.in_flight -= 1

    def done(self, latency_s: float) -> None:
        """An admitted prediction finished after ``latency_s``: free its slot, learn from it."""
        self.in_flight -= 1
        self._latencies.append(latency_s)
        now = self.clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        completed = len(self._latencies)
        self.throughput = 0.7 * self.throughput + 0.3 * completed / elapsed
        latencies = sorted(self._latencies)
        fastest, slow = latencies[0], latencies[int(0.9 * (completed - 1))]
        self.service_s = fastest if not self.service_s else 0.9 * self.service_s + 0.1 * fastest
        budget = max(self.budget_s, SERVICE_FACTOR * self.service_s)
        if slow > budget:
            self.limit = max(self.min_limit, self.limit * max(0.5, budget / slow))
        elif self._limited and slow < self._grows_below() * budget:
            self.limit = min(self.max_limit, self.limit + max(1.0, math.sqrt(self.limit)))
        self._latencies, self._window_start, self._limited = [], now, False
        self.on_limit(self.limit)

    def _grows_below(self) -> float:
        """The share of the budget under which admitted calls' p90 lets the limit grow."""
        return GROW_BELOW if self.limit < self.start else GROW_BELOW_PAST_START

    async def hold_refused(self) -> int:
        """Hold a refused caller for ``hold_s`` (so callers that retry at once cannot make
        refusals the worker's main job), then the ``Retry-After`` to answer it with."""
        self.held += 1
        try:
            await asyncio.sleep(self.hold_s())
        finally:
            self.held -= 1
        return self.retry_after_s()

    def hold_s(self) -> float:
        """How long to hold a refusal: enough that refusals cost at most ``max_refusals_per_s``,
        but never more than ``max_hold_s``. Below that cap each caller refused is held longer than
        the one before, so they come back one by one; at the cap they would all get the same time
        and come back together, a wave of refusals that stalls the answers in between (at 2,048
        callers the accepted p99 doubled, BENCHMARKS.md), so there the hold is drawn between half
        and all of the cap."""
        hold = max(0.01, (self.held + 1) / self.max_refusals_per_s)
        if hold < self.max_hold_s:
            return hold
        return self.max_hold_s * (1.0 - self.draw() / 2)

    def retry_after_s(self) -> int:
        """Seconds the backlog (admitted and refused callers) takes to drain, at least 1."""
        backlog = self.in_flight + self.held
        return max(1, min(30, math.ceil(backlog / max(self.throughput, 1.0))))
