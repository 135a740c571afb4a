"""Input checks against a model's card (service/gateway/validation.py), below the HTTP layer."""

from __future__ import annotations

import numpy as np
import pytest

from service.config import LimitsConfig
from service.errors import BadRequest
from service.gateway.validation import check_inputs
from service.model_card import ModelCard
from service.tensors import TensorSpec

CARD = ModelCard(
    name="m",
    version="v1",
    sha256="0" * 64,
    task="regression",
    inputs=(TensorSpec("x", "FP32", (-1, 3)),),
    outputs=(TensorSpec("y", "FP32", (-1, 1)),),
    feature_names=("a", "b", "c"),
    label_column="y",
    value_output="y",
)


def test_inputs_are_checked_by_name_type_shape_and_finiteness() -> None:
    limits = LimitsConfig()
    assert check_inputs(CARD, {"x": np.ones((2, 3), np.float32)}, limits) == 2
    refused = {
        "missing input": {"z": np.ones((1, 3), np.float32)},
        "unknown input": {"x": np.ones((1, 3), np.float32), "z": np.ones(1)},
        "must be FP32": {"x": np.ones((1, 3), np.float64)},
        "has shape": {"x": np.ones((1, 4), np.float32)},
        "NaN or infinity": {"x": np.array([[1, np.nan, 2]], np.float32)},
        "empty batch": {"x": np.ones((0, 3), np.float32)},
    }
    for message, tensors in refused.items():
        with pytest.raises(BadRequest, match=message):
            check_inputs(CARD, tensors, limits)
    infinite = np.full((1, 3), np.inf, np.float32)
    assert check_inputs(CARD, {"x": infinite}, LimitsConfig(allow_non_finite=True)) == 1
