"""Whether a ground-truth label fits a model: a class it predicts, or a finite number for a
regressor (at most ``MAX_MAGNITUDE`` either way), one per row of the request it labels.

The gateway checks a label against the models of the endpoint its request id names before the
monitor stores it; the monitor checks it again against the exact model that answered when that
record is already there (rows included). A label that fits no model is refused with a reason, so
nothing stored can break the analysis later.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.codecs import MAX_MAGNITUDE, is_bounded_number
from service.model_card import ModelCard

SCALARS = (str, int, float, bool)


def values_of(label: object) -> list | None:
    """The label as one value per row, or None when it is not a value or a list of values."""
    values = label if isinstance(label, list) else [label]
    if not values or not all(isinstance(v, SCALARS) for v in values):
        return None
    return values


def value_problem(card: ModelCard, value: object) -> str | None:
    """Why ``value`` cannot be a label of ``card``'s model, or None when it can."""
    if card.task == "regression":
        if not is_bounded_number(value):
            shown = repr(value)
            shown = shown if len(shown) < 40 else f"{shown[:30]}..."
            return (
                f"model {card.tag} is a regressor: a label is a finite number of at most "
                f"{MAX_MAGNITUDE:g} either way, not {shown}"
            )
        return None
    if str(value) not in {str(c) for c in card.class_labels}:
        return f"{value!r} is not a class of model {card.tag} ({list(card.class_labels)})"
    return None


def label_problem(cards: Iterable[ModelCard], label: object, rows: int | None = None) -> str | None:
    """Why ``label`` fits none of ``cards`` (or not ``rows`` rows), or None when it fits one."""
    values = values_of(label)
    if values is None:
        return "a label is a value or a non-empty list of values (one per row)"
    if rows is not None and len(values) != rows:
        return f"the request had {rows} row(s) but the label has {len(values)} value(s)"
    problem = "the endpoint has no model to check it against"
    for card in cards:
        problem = next((p for v in values if (p := value_problem(card, v))), None)
        if problem is None:
            return None
    return problem
