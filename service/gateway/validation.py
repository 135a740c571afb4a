"""Checking decoded input tensors against a model's signature and the configured limits.

Both protocols decode into named numpy arrays and then pass through here, so a request is judged the
same way whichever API it came by.
"""

from __future__ import annotations

import numpy as np

from service.config import LimitsConfig
from service.errors import BadRequest, PayloadTooLarge
from service.model_card import ModelCard
from service.tensors import FLOAT_TYPES, OIP_TO_NUMPY, Tensors


def check_inputs(card: ModelCard, tensors: Tensors, limits: LimitsConfig) -> int:
    """Raise a 4xx ``GatewayError`` if the tensors cannot be fed to the model; return the row
    count."""
    specs = card.inputs
    if len(tensors) != len(specs):
        _refuse_names(card, tensors)
    rows = None
    for spec in specs:  # loops, not generators, here and below: this runs for every request
        name, array = spec.name, tensors.get(spec.name)
        if array is None:
            _refuse_names(card, tensors)
        if array.dtype != OIP_TO_NUMPY[spec.datatype] and not (
            spec.datatype == "BYTES" and array.dtype.kind in "OUS"
        ):
            raise BadRequest(f"input {name!r} must be {spec.datatype}")
        if not spec.accepts_shape(array.shape):
            raise BadRequest(
                f"input {name!r} has shape {list(array.shape)}; model {card.tag} expects "
                f"{list(spec.shape)} (-1 = any)"
            )
        if spec.batched:
            if rows is not None and array.shape[0] != rows:
                raise BadRequest(f"inputs disagree on the number of rows ({rows} vs {name!r})")
            rows = array.shape[0]
        if spec.datatype in FLOAT_TYPES and not limits.allow_non_finite:
            if not np.isfinite(array).all():  # a JSON number past the type's range is infinite
                largest = float(np.finfo(array.dtype).max)
                raise BadRequest(
                    f"input {name!r} contains NaN or infinity, or a number beyond "
                    f"{spec.datatype}'s range (±{largest:.3g}), which this model cannot take"
                )
    rows = 1 if rows is None else rows
    if rows == 0:
        raise BadRequest("empty batch: the request has no rows")
    if rows > limits.max_rows:
        raise PayloadTooLarge(f"{rows} rows is over the limit of {limits.max_rows} per request")
    return rows


def _refuse_names(card: ModelCard, tensors: Tensors) -> None:
    """400 naming the inputs missing or unknown to the model."""
    expected = sorted(spec.name for spec in card.inputs)
    missing = sorted(set(expected) - tensors.keys())
    if missing:
        raise BadRequest(f"missing input(s) {missing}; model {card.tag} takes {expected}")
    unknown = sorted(tensors.keys() - set(expected))
    raise BadRequest(f"unknown input(s) {unknown}; model {card.tag} takes {expected}")
