"""Shadow mirroring: a copy of a request runs on a shadow variant after the caller has its answer.

The shadow runs in a background task the caller never waits for; its failures, slowness and queue
overflows are counted and go no further. Its predictions are compared with the primary's row by
row (the predicted label for classifiers, the value within 1e-6 relative for regressors).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from service.codecs.plain import row_predictions
from service.dataplane import Route
from service.errors import GatewayError, Overloaded
from service.metrics import GatewayMetrics
from service.model_pool import LoadedModel
from traffic.table import VariantSpec

log = logging.getLogger("gateway.shadow")
Tensors = dict[str, np.ndarray]
RunFn = Callable[[str, VariantSpec, LoadedModel, Tensors], Awaitable[Tensors]]


def agreeing_rows(primary: np.ndarray, shadow: np.ndarray, regression: bool) -> int:
    if regression:
        return int(np.isclose(primary, shadow, rtol=1e-6, atol=0).sum())
    return int((primary == shadow).sum())


class ShadowRunner:
    """Starts shadow copies and keeps their tasks referenced until they finish."""

    def __init__(self, run: RunFn, metrics: GatewayMetrics) -> None:
        self._run = run
        self._metrics = metrics
        self._tasks: set[asyncio.Task] = set()

    def mirror(self, route: Route, tensors: Tensors, primary: Tensors) -> None:
        for variant, model in route.shadows:
            task = asyncio.create_task(self._shadow(route, variant, model, tensors, primary))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self,
        route: Route,
        variant: VariantSpec,
        model: LoadedModel,
        tensors: Tensors,
        primary: Tensors,
    ) -> None:
        outcome = "ok"
        try:
            outputs = await self._run(route.endpoint, variant, model, tensors)
            ours = row_predictions(route.model.card, primary)
            theirs = row_predictions(model.card, outputs)
            regression = route.model.card.task == "regression"
            agree = agreeing_rows(ours, theirs, regression) if ours.shape == theirs.shape else 0
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
