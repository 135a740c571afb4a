"""The offline gate: before a candidate gets a single request, it is run on the labeled reference
data of the stable model and its own (a row both hold counted once: they are often one file),
next to the stable model, and must be non-inferior there with no invalid outputs.

Classifiers: accuracy may be at most ``margin`` below stable's; an answer outside the candidate's
own class labels is invalid. Regressors: MAE may be at most ``margin`` (relative) above stable's; a
NaN or infinite value is invalid. A comparison that gives no number (a reference label that is
not one, in a model registered before labels were checked) fails rather than passes. The result is
a ``CheckResult`` that goes into the audit log.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from service import registry
from service.codecs.plain import row_predictions
from service.errors import ConfigError
from service.model_card import MODEL_FILE, ModelCard
from traffic.rollout_checks import CheckResult


def predict(card: ModelCard, rows: pd.DataFrame) -> np.ndarray:
    """The model's prediction for every row (CPU; offline work, not serving)."""
    outputs = registry.run_on_rows(registry.model_dir(card.tag) / MODEL_FILE, card, rows)
    return row_predictions(card, outputs)


def _invalid(card: ModelCard, predictions: np.ndarray) -> int:
    if card.task == "regression":
        return int((~np.isfinite(predictions.astype(float))).sum())
    known = {str(c) for c in card.class_labels}
    return sum(str(p) not in known for p in predictions)


def offline_gate(stable_tag: str, candidate_tag: str, margin: float) -> CheckResult:
    """Run both models on both labeled reference samples and compare them."""
    try:
        stable_card = registry.load_card(stable_tag)
        candidate_card = registry.load_card(candidate_tag)
        theirs_named_ours = {candidate_card.label_column: stable_card.label_column}
        frames = [
            registry.load_reference(stable_tag),
            registry.load_reference(candidate_tag).rename(columns=theirs_named_ours),
        ]
        columns = [*stable_card.feature_names, stable_card.label_column]
        rows = pd.concat(frames)[columns].drop_duplicates(ignore_index=True)  # often one file
        label = rows[stable_card.label_column]
        stable = predict(stable_card, rows)
        candidate = predict(candidate_card, rows)
    except (ConfigError, KeyError, ValueError) as error:
        return CheckResult("offline_gate", "comparison", "FAIL", f"cannot run: {error}")
    invalid = _invalid(candidate_card, candidate)
    if candidate_card.task == "regression":
        truth = label.to_numpy(dtype=float)
        ours, theirs = (float(np.abs(p.astype(float) - truth).mean()) for p in (stable, candidate))
        worse = theirs > ours * (1 + margin)
        metric = "mae"
    else:
        truth = label.astype(str).to_numpy()
        ours, theirs = (float((p.astype(str) == truth).mean()) for p in (stable, candidate))
        worse = theirs < ours - margin
        metric = "accuracy"
    statistic = {
        "rows": len(rows),
        "metric": metric,
        "stable": ours,
        "candidate": theirs,
        "margin": margin,
        "invalid": invalid,
    }
    summary = f"{metric} {theirs:.4f} vs stable {ours:.4f} on {len(rows)} labeled rows"
    if not (math.isfinite(ours) and math.isfinite(theirs)):  # a label that is not a number
        return CheckResult("offline_gate", "comparison", "FAIL", f"cannot compare: {summary}")
    if invalid:
        return CheckResult(
            "offline_gate", "comparison", "FAIL", f"{invalid} invalid outputs; {summary}", statistic
        )
    if worse:
        return CheckResult("offline_gate", "comparison", "FAIL", f"inferior: {summary}", statistic)
    return CheckResult("offline_gate", "comparison", "PASS", summary, statistic)
