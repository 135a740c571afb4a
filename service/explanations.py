"""SHAP attributions of a registered model's answers: what both processes explain with.

The gateway's ``/explain`` runs ``attributions`` in a process of its own (service/gateway/explain.py);
the monitor runs ``absolute_attributions`` on a sample of each variant's window and of the model's
reference, to watch whether the reasons a model gives drift (service/monitor/runs.py).

The method is SHAP's permutation explainer (the ``shap`` package) with an independent masker over
the model's reference sample (a seeded subsample of ``background_rows`` rows): antithetic
permutations make the attributions add up exactly, ``base_value + sum(values)`` = the explained
output, and for a model without interactions they are exact (a linear model's are its coefficient
times the row's distance from the background mean). The explained output is the probability of the
target class for a classifier and the value for a regressor. The model is the registry's ONNX file,
run by onnxruntime on the CPU in the calling process, in batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from service.model_card import MODEL_FILE, ModelCard
from service.tensors import OIP_TO_NUMPY

REGRESSION_TARGET = "value"
"""The one target a regressor's explanation has: the value it answers."""
PERMUTATIONS = 10
"""Permutations per row when ``max_evals`` is 0 (each costs 2 x features evaluations)."""
SESSION_THREADS = 1
"""onnxruntime threads of an explained model's session. Its runs are many small batches (the
background rows, masked), which a pool splits and whose threads then spin waiting for the next:
with onnxruntime's default pool (two threads here) an explanation took twice the CPU of one thread
(bench/explain.py: the MLP's 29 against 18 ms a row, the logistic regression's 21 against 10.5) for
about the same time (15-24 against 18-19 ms a row, by run). Both processes that explain (the
monitor's attribution, ``/explain``'s) share the machine with serving, so CPU is what counts."""


@dataclass(frozen=True)
class Explanation:
    """Why one row got its answer: ``base_value + sum(values)`` is the explained output."""

    target: str
    base_value: float
    values: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


_loaded: dict[tuple[str, int], tuple[object, np.ndarray]] = {}
"""Per model tag and background size: its onnxruntime session and background rows (loaded once
per process)."""


def _model(card: ModelCard, background_rows: int) -> tuple[object, np.ndarray]:
    key = (card.tag, background_rows)
    if key not in _loaded:
        from service import registry
        from service.runtime import ModelSession

        path = registry.model_dir(card.tag) / MODEL_FILE
        session = ModelSession(path, card, ["CPUExecutionProvider"], SESSION_THREADS)
        reference = registry.load_reference(card.tag)[list(card.feature_names)]
        sample = reference.sample(min(background_rows, len(reference)), random_state=0)
        _loaded[key] = (session, sample.to_numpy(dtype=np.float64))
    return _loaded[key]


def _shap():
    """The ``shap`` package, imported with numba's compiler off (unless ``NUMBA_DISABLE_JIT`` is
    set: numba's own switch, left to the operator).

    SHAP compiles its masking loops with numba at their first call: about 7.5 s of CPU in every
    process that explains, so the first ``/explain`` of each gateway worker waited longer than
    common client timeouts, and a monitor's first attribution run took a core from a serving
    gateway for seconds. As plain Python the same loops cost a few milliseconds more a row
    (bench/explain.py, BENCHMARKS.md): less than the compile until a process has explained about
    a thousand rows. Operators who explain in bulk can set ``NUMBA_DISABLE_JIT=0``. Set before the
    import, as numba decides at decoration time; nothing else in these processes uses numba."""
    import numba

    if "NUMBA_DISABLE_JIT" not in os.environ:
        numba.config.DISABLE_JIT = True
    import shap

    return shap


def attributions(
    card: ModelCard,
    features: np.ndarray,
    targets: list[str],
    background_rows: int,
    max_evals: int,
) -> list[Explanation]:
    """SHAP values of each row for its target (runs in the explanation process)."""
    shap = _shap()
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


def absolute_attributions(
    card: ModelCard,
    features: np.ndarray,
    targets: Sequence[str],
    background_rows: int,
    max_evals: int = 0,
) -> np.ndarray:
    """Each row's absolute attribution per feature (rows x features, in the card's order): how
    much the model leans on each, whatever the direction. A sample's profile is their mean per
    feature; the rows themselves say how far noise takes it (monitors/attribution.py)."""
    found = attributions(card, features, list(targets), background_rows, max_evals)
    return np.array([[abs(e.values[name]) for name in card.feature_names] for e in found])
