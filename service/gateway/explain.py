"""SHAP explanations of the answers one variant gives, computed away from the serving path.

``Explainer.explain`` hands the rows to a process of its own (spawned on first use, one per gateway
worker), so SHAP's Python loops never hold the worker's GIL while ``/predict`` runs; calls queued or
running are bounded (``explain.max_waiting``), beyond which the answer is 429 with Retry-After.

The method is SHAP's permutation explainer (the ``shap`` package) with an independent masker over
the model's reference sample (a seeded subsample of ``explain.background_rows`` rows): antithetic
permutations make the attributions add up exactly, ``base_value + sum(values)`` = the explained
output, and for a model without interactions they are exact (a linear model's are its coefficient
times the row's distance from the background mean). The explained output is the probability of the
target class for a classifier (by default the class it predicted) and the value for a regressor. The
model is the registry's ONNX file, run by onnxruntime on the CPU in that process, in batches.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from service.config import ExplainConfig
from service.errors import BadRequest, Overloaded
from service.model_card import MODEL_FILE, ModelCard
from service.tensors import OIP_TO_NUMPY, Tensors

REGRESSION_TARGET = "value"
"""The one target a regressor's explanation has: the value it answers."""
PERMUTATIONS = 10
"""Permutations per row when ``explain.max_evals`` is 0 (each costs 2 x features evaluations)."""


@dataclass(frozen=True)
class Explanation:
    """Why one row got its answer: ``base_value + sum(values)`` is the explained output."""

    target: str
    base_value: float
    values: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


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


class Explainer:
    """One gateway worker's explanations: a process of their own, a bounded number waiting."""

    def __init__(self, config: ExplainConfig) -> None:
        self.config = config
        self.waiting = 0
        self._pool: ProcessPoolExecutor | None = None

    async def explain(
        self, card: ModelCard, inputs: Tensors, targets: Sequence[str]
    ) -> list[Explanation]:
        """One explanation per row of ``inputs`` (already validated against ``card``)."""
        if len(card.inputs) != 1:
            raise BadRequest(f"{card.tag} takes several input tensors: it cannot be explained")
        features = inputs[card.feature_input.name]
        if len(features) > self.config.max_rows:
            raise BadRequest(
                f"explain at most {self.config.max_rows} rows per call (explain.max_rows)"
            )
        if self.waiting >= self.config.max_waiting:
            raise Overloaded("explanations are busy: retry after 1 s (nothing was done)")
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._process(),
                attributions,
                card,
                np.ascontiguousarray(features),
                list(targets),
                self.config.background_rows,
                self.config.max_evals,
            )
        finally:
            self.waiting -= 1

    def _process(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawned, not forked: the worker has threads (onnxruntime's, the event loop's)
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# -- in the explanation process ----------------------------------------------------------------

_loaded: dict[tuple[str, int], tuple[object, np.ndarray]] = {}
"""Per model tag and background size: its onnxruntime session and background rows (loaded once
per process)."""


def _model(card: ModelCard, background_rows: int) -> tuple[object, np.ndarray]:
    key = (card.tag, background_rows)
    if key not in _loaded:
        from service import registry
        from service.runtime import ModelSession

        session = ModelSession(
            registry.model_dir(card.tag) / MODEL_FILE, card, ["CPUExecutionProvider"]
        )
        reference = registry.load_reference(card.tag)[list(card.feature_names)]
        sample = reference.sample(min(background_rows, len(reference)), random_state=0)
        _loaded[key] = (session, sample.to_numpy(dtype=np.float64))
    return _loaded[key]


def attributions(
    card: ModelCard,
    features: np.ndarray,
    targets: list[str],
    background_rows: int,
    max_evals: int,
) -> list[Explanation]:
    """SHAP values of each row for its target (runs in the explanation process)."""
    import shap

    session, background = _model(card, background_rows)
    spec = card.feature_input
    dtype = OIP_TO_NUMPY[spec.datatype]
    evals = max_evals or 2 * PERMUTATIONS * len(card.feature_names) + 1
    classes = [str(c) for c in card.class_labels]

    def output(target: str):
        def explained(rows: np.ndarray) -> np.ndarray:
            outputs = session.run({spec.name: rows.astype(dtype)})
            if card.task == "classification":
                return np.asarray(outputs[card.probability_output])[:, classes.index(target)]
            return np.asarray(outputs[card.value_output]).reshape(len(rows))

        return explained

    masker = shap.maskers.Independent(background, max_samples=len(background))
    found: list[Explanation | None] = [None] * len(features)
    for target in dict.fromkeys(targets):
        at = [i for i, t in enumerate(targets) if t == target]
        explainer = shap.PermutationExplainer(output(target), masker, seed=0)
        shapley = explainer(features[at].astype(np.float64), max_evals=evals, silent=True)
        for row, values, base in zip(at, shapley.values, shapley.base_values):
            named = dict(zip(card.feature_names, map(float, values)))
            found[row] = Explanation(target, float(base), named)
    return found
