"""Admission under overload: refuse early and cheaply, and keep accepted predictions within the SLO.

``PredictionGate`` is the outermost ASGI app of a gateway worker. Prediction calls (``POST
/predict/...``, ``POST /v2/models/.../infer``) go through ``Admission`` before anything else is done
for them, then straight to the gateway's own app (service/http/app.py), past BentoML's middleware
stack (tracing, timeout, access log: none of it serves these routes; measured in BENCHMARKS.md).
Everything else goes to BentoML's app as before.

``Admission`` is an adaptive concurrency limit in the manner of Netflix's concurrency-limits, run on
time: every ``WINDOW_S`` it compares the 90th percentile of the latency of the predictions it
admitted with the budget (half of ``server.latency_slo_ms`` unless ``admission.queue_budget_ms``
says otherwise) and shrinks the limit in proportion when they took too long, or grows it while it
is what holds traffic back and they are well within. A prediction beyond the limit is refused with
a 429 before its body is read; the refusal is held for a moment first (longer the more callers are
being refused), so that callers that retry at once cannot turn refusals into the work that starves
accepted requests. ``Retry-After`` is the time the current backlog takes to drain.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping

import msgspec

Scope = MutableMapping
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
WINDOW_S = 0.1
"""How often the limit is adjusted (and the window of latencies it looks at)."""
SHED_MEMORY_S = 1.0
"""After a refusal, shadows and sampled inputs are skipped this long (shed before answers)."""
MAX_HOLD_S = 2.0


class Admission:
    """One worker's concurrency limit for predictions, adapted to keep them within a time budget."""

    def __init__(
        self,
        budget_s: float,
        min_limit: int,
        max_limit: int,
        max_refusals_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.max_refusals_per_s = max_refusals_per_s
        self.clock = clock
        self.limit = float(min(max_limit, max(min_limit, 64)))
        self.in_flight = 0
        self.held = 0
        self.throughput = 0.0
        """Completions per second, smoothed over windows."""
        self._latencies: list[float] = []
        self._window_start = clock()
        self._limited = False
        self._last_refusal = -math.inf

    @property
    def shedding(self) -> bool:
        """Whether predictions were refused lately: optional work (shadows, sampled inputs) waits."""
        return self.clock() - self._last_refusal < SHED_MEMORY_S

    def admit(self) -> bool:
        """Take a slot for a prediction, or say no (the caller then ``refuse``s)."""
        if self.in_flight < int(self.limit):
            self.in_flight += 1
            return True
        self._limited = True
        self._last_refusal = self.clock()
        return False

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
        slow = sorted(self._latencies)[int(0.9 * (completed - 1))]
        if slow > self.budget_s:
            self.limit = max(self.min_limit, self.limit * max(0.5, self.budget_s / slow))
        elif self._limited and slow < 0.7 * self.budget_s:
            self.limit = min(self.max_limit, self.limit + max(1.0, math.sqrt(self.limit)))
        self._latencies, self._window_start, self._limited = [], now, False

    def hold_s(self) -> float:
        """How long to hold a refusal: enough that refusals cost at most ``max_refusals_per_s``."""
        return min(MAX_HOLD_S, max(0.01, (self.held + 1) / self.max_refusals_per_s))

    def retry_after_s(self) -> int:
        """Seconds the backlog (admitted and refused callers) takes to drain, at least 1."""
        backlog = self.in_flight + self.held
        return max(1, min(30, math.ceil(backlog / max(self.throughput, 1.0))))


def is_prediction(scope: Scope) -> bool:
    path = scope["path"]
    return scope["method"] == "POST" and (
        path.startswith("/predict/") or (path.startswith("/v2/models/") and path.endswith("/infer"))
    )


class PredictionGate:
    """The worker's outermost ASGI app: predictions through ``Admission`` to the gateway's own app,
    everything else to BentoML's."""

    def __init__(
        self,
        bentoml_app: ASGIApp,
        gateway_app: ASGIApp,
        admission: Callable[[], Admission | None],
        refused: Callable[[str], None],
        worker: str,
    ) -> None:
        self.bentoml_app = bentoml_app
        self.gateway_app = gateway_app
        self.admission = admission
        """This worker's admission, once its gateway has started (None before)."""
        self.refused = refused
        """Counts a refusal by route (``predict`` or ``infer``)."""
        self.worker = worker

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        admission = self.admission() if scope["type"] == "http" and is_prediction(scope) else None
        if admission is None:
            await self.bentoml_app(scope, receive, send)
            return
        if not admission.admit():
            await self._refuse(admission, scope, send)
            return
        started = time.monotonic()
        try:
            await self.gateway_app(scope, receive, send)
        finally:
            admission.done(time.monotonic() - started)

    async def _refuse(self, admission: Admission, scope: Scope, send: Callable) -> None:
        self.refused("predict" if scope["path"].startswith("/predict/") else "infer")
        admission.held += 1
        try:
            await asyncio.sleep(admission.hold_s())
        finally:
            admission.held -= 1
        retry = admission.retry_after_s()
        body = msgspec.json.encode(
            {"error": f"the gateway is overloaded: retry after {retry} s (nothing was done)"}
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry).encode()),
            (b"x-gateway-worker", self.worker.encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
