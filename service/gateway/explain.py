"""``/explain``: SHAP explanations of the answers one variant gives, computed away from the
serving path.

``Explainer.explain`` hands the rows to a process of its own (spawned on first use, one per gateway
worker), so SHAP's Python loops never hold the worker's GIL while ``/predict`` runs; calls queued or
running are bounded (``explain.max_waiting``), beyond which the answer is 429 with Retry-After. A
process that stops (killed, out of memory) is replaced on the next call. What is computed, and
how, is service/explanations.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from service.config import ExplainConfig
from service.errors import BadRequest, ConfigError, Overloaded, Unavailable
from service.explanations import REGRESSION_TARGET, Explanation, attributions
from service.model_card import ModelCard
from service.tensors import Tensors


def targets_for(card: ModelCard, outputs: Tensors, asked: str | None) -> list[str]:
    """The target of each row: the class asked for, else the class the model answered (a
    regressor's is its value). 400 for a class the model does not have."""
    rows = len(next(iter(outputs.values())))
    if card.task != "classification":
        if asked not in (None, REGRESSION_TARGET):
            raise BadRequest(f"a regressor's explanations have one target, {REGRESSION_TARGET!r}")
        return [REGRESSION_TARGET] * rows
    classes = [str(c) for c in card.class_labels]
    if asked is not None:
        if asked not in classes:
            raise BadRequest(f"target {asked!r} is not a class of {card.tag}; classes: {classes}")
        return [asked] * rows
    if card.label_output is None:
        raise BadRequest(f"{card.tag} answers no label: name a target class (?target=)")
    return [str(label) for label in np.asarray(outputs[card.label_output]).reshape(-1)]


NICENESS = 10
"""How much nicer than its worker the explanation process is. It is spawned in the worker's
session, so Linux weighs the two against each other by their nice values: at 10 the process gets
about a tenth of a core's share against a busy worker, and the whole of a core nobody else wants.
At the worker's own priority, sixteen anonymous callers of ``/explain`` took a core from the
predictions (BENCHMARKS.md)."""


def _lower_priority() -> None:
    """The explanation process's first act (``ProcessPoolExecutor``'s initializer)."""
    os.nice(NICENESS)


class Explainer:
    """One gateway worker's explanations: a process of their own, a bounded number waiting."""

    def __init__(self, config: ExplainConfig) -> None:
        self.config = config
        self.waiting = 0
        self._pool: ProcessPoolExecutor | None = None

    def admit(self) -> None:
        """429 for a call that would wait beyond ``explain.max_waiting``: asked first, before
        its body is read or its model runs (a refusal after those cost what an answer does),
        and again when its explanation is handed over."""
        if self.waiting >= self.config.max_waiting:
            raise Overloaded("explanations are busy: retry after 1 s (nothing was done)")

    def check(self, card: ModelCard, inputs: Tensors) -> None:
        """400 for what cannot be explained, before the model runs for it: a model of several
        input tensors, or more rows than ``explain.max_rows``."""
        if len(card.inputs) != 1:
            raise BadRequest(f"{card.tag} takes several input tensors: it cannot be explained")
        features = inputs.get(card.feature_input.name)  # missing: validation says so next
        if features is not None and len(features) > self.config.max_rows:
            raise BadRequest(
                f"explain at most {self.config.max_rows} rows per call (explain.max_rows)"
            )

    async def explain(
        self, card: ModelCard, inputs: Tensors, targets: Sequence[str]
    ) -> list[Explanation]:
        """One explanation per row of ``inputs`` (validated against ``card`` and ``check``ed).
        A 503 when the explanation process stopped while it worked (killed, out of memory): the
        next call starts another, where a broken pool refused every call until a restart. A 503
        too when the model's files are no longer in the model store (the process loads them
        from there; the worker serves from memory)."""
        features = inputs[card.feature_input.name]
        self.admit()
        self.waiting += 1
        pool = self._process()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                pool,
                attributions,
                card,
                np.ascontiguousarray(features),
                list(targets),
                self.config.background_rows,
                self.config.max_evals,
            )
        except BrokenProcessPool:
            if self._pool is pool:  # not yet replaced by a call that came after
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable(
                "the explanation process stopped (killed, or out of memory): retry; nothing "
                "was done"
            ) from None
        except ConfigError as error:  # its files left the model store while it was served
            raise Unavailable(f"cannot explain {card.tag}: {error}") from None
        finally:
            self.waiting -= 1

    def _process(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawned, not forked: the worker has threads (onnxruntime's, the event loop's)
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_lower_priority
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
