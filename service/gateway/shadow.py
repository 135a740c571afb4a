"""Shadow mirroring: a copy of a request runs on a shadow variant after the caller has its answer.

The shadows run in a background task the caller never waits for; their failures, slowness and queue
overflows are counted and go no further. Their predictions are compared with the primary's row by
row (the predicted label for classifiers, the value within 1e-6 relative for regressors) and handed
on (the gateway records them beside the primary's, so the monitor sees both).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from monitors.shadow import agreeing
from service.codecs.plain import row_predictions
from service.errors import GatewayError, Overloaded
from service.gateway.admission import OVERLOAD
from service.gateway.dataplane import Route
from service.gateway.metrics import GatewayMetrics
from service.gateway.models import LoadedModel
from service.tensors import Tensors
from traffic.table import VariantSpec

log = logging.getLogger("gateway.shadow")
RunFn = Callable[[str, VariantSpec, LoadedModel, Tensors], Awaitable[Tensors]]
ShadowDone = Callable[[dict[str, list]], None]


class ShadowRunner:
    """Starts shadow copies and keeps their tasks referenced until they finish."""

    def __init__(
        self, run: RunFn, metrics: GatewayMetrics, shedding: Callable[[], bool] = lambda: False
    ) -> None:
        self._run = run
        self._metrics = metrics
        self._shedding = shedding
        """True while the gateway refuses predictions: shadows are optional work, skipped then."""
        self._tasks: set[asyncio.Task] = set()

    def mirror(self, route: Route, tensors: Tensors, primary: Tensors, done: ShadowDone) -> None:
        """Run the route's shadows in the background; ``done`` gets their predictions by name
        (at once with none, when shadows are shed under overload)."""
        if self._shedding():
            self._metrics.shed_series("shadow", OVERLOAD).inc(len(route.shadows))
            done({})
            return
        task = asyncio.create_task(self._mirror(route, tensors, primary, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(
        self, route: Route, tensors: Tensors, primary: Tensors, done: ShadowDone
    ) -> None:
        ours = row_predictions(route.model.card, primary)
        answers = await asyncio.gather(
            *(self._shadow(route, v, m, tensors, ours) for v, m in route.shadows)
        )
        done(
            {
                variant.name: theirs
                for (variant, _), theirs in zip(route.shadows, answers)
                if theirs is not None
            }
        )

    async def _shadow(
        self,
        route: Route,
        variant: VariantSpec,
        model: LoadedModel,
        tensors: Tensors,
        ours: np.ndarray,
    ) -> np.ndarray | None:
        """One shadow's row predictions, counted by outcome and agreement; None if it failed."""
        outcome, theirs = "ok", None
        try:
            outputs = await self._run(route.endpoint, variant, model, tensors)
            theirs = row_predictions(model.card, outputs)
            regression = route.model.card.task == "regression"
            agree = (
                int(agreeing(ours, theirs, regression).sum()) if ours.shape == theirs.shape else 0
            )
            rows = self._metrics.shadow_rows
            rows.labels(route.endpoint, variant.name, "agree").inc(agree)
            rows.labels(route.endpoint, variant.name, "disagree").inc(len(ours) - agree)
        except Overloaded:
            outcome = "rejected"
        except GatewayError:
            outcome = "error"
        except Exception:  # a shadow's fault is counted and logged, never raised to anyone
            log.exception("shadow %s on %s failed", variant.name, route.endpoint)
            outcome = "error"
        self._metrics.shadow_requests.labels(route.endpoint, variant.name, outcome).inc()
        return theirs
