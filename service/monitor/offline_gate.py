"""The offline gate: before a candidate gets a single request, it is run on the labeled reference
data of the stable model and its own (a row both hold counted once: they are often one file),
next to the stable model, and must give no invalid output and not be worse there by more than
its margin with confidence.

Classifiers: accuracy more than ``margin`` below stable's; an answer outside the candidate's own
class labels is invalid. Regressors: MAE more than ``margin`` (relative) above stable's; a NaN or
infinite value is invalid. "With confidence": a one-sided paired t-test of the rows' differences
rejects "no worse than the margin allows" at the gate's share of the rollout's budget
(traffic/rollout_checks.py ``offline_gate_alpha``). A reference sample is a sample: two models as
accurate as each other that disagree on a tenth of 400 rows are 2 points apart on it in 9% of
samples, and the point estimate held to the margin refused them that often, before any traffic
and outside every budget. What the gate lets through on too few rows the online comparisons judge.
A comparison that gives no number (a reference label that is not one, in a model registered
before labels were checked) fails rather than passes. The result is a ``CheckResult`` that goes
into the audit log.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

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


def offline_gate(stable_tag: str, candidate_tag: str, margin: float, alpha: float) -> CheckResult:
    """Run both models on both labeled reference samples and compare them at level ``alpha``."""
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
    regression = candidate_card.task == "regression"
    if regression:
        truth = label.to_numpy(dtype=float)
        losses = [np.abs(p.astype(float) - truth) for p in (stable, candidate)]
        ours, theirs = (float(loss.mean()) for loss in losses)
        metric = "mae"
    else:
        truth = label.astype(str).to_numpy()
        losses = [(p.astype(str) != truth).astype(float) for p in (stable, candidate)]
        ours, theirs = (1.0 - float(loss.mean()) for loss in losses)
        metric = "accuracy"
    summary = f"{metric} {theirs:.4f} vs stable {ours:.4f} on {len(rows)} labeled rows"
    if not (math.isfinite(ours) and math.isfinite(theirs)):  # a label that is not a number
        return CheckResult("offline_gate", "comparison", "FAIL", f"cannot compare: {summary}")
    p_value = worse_p_value(*losses, margin, regression)
    statistic = {
        "rows": len(rows),
        "metric": metric,
        "stable": ours,
        "candidate": theirs,
        "margin": margin,
        "invalid": invalid,
        "p_value": p_value,
        "alpha": alpha,
    }
    if invalid:
        return CheckResult(
            "offline_gate", "comparison", "FAIL", f"{invalid} invalid outputs; {summary}", statistic
        )
    if p_value <= alpha:
        reason = f"worse by more than {margin:g}, with confidence (p = {p_value:.2g}): {summary}"
        return CheckResult("offline_gate", "comparison", "FAIL", reason, statistic)
    return CheckResult("offline_gate", "comparison", "PASS", summary, statistic)


def worse_p_value(
    stable_loss: np.ndarray, candidate_loss: np.ndarray, margin: float, relative: bool
) -> float:
    """The p-value of a one-sided paired t-test of "the candidate's mean loss is at most
    stable's plus ``margin``" (``relative``: plus ``margin`` times stable's), per row: 1 for
    each wrong answer, or a regressor's absolute error. Small where the candidate is worse by
    more than the margin beyond what the rows' sampling explains."""
    allowed = margin * stable_loss if relative else margin
    excess = candidate_loss - stable_loss - allowed
    mean, n = float(np.mean(excess)), len(excess)
    spread = float(np.std(excess, ddof=1)) if n > 1 else 0.0
    if spread == 0.0:
        return 0.0 if mean > 0 else 1.0
    return float(stats.t.sf(mean / (spread / math.sqrt(n)), n - 1))
