"""Input checks against a model's card (service/gateway/validation.py), below the HTTP layer."""

from __future__ import annotations

import numpy as np
import pytest

from service.config import LimitsConfig
from service.errors import BadRequest, PayloadTooLarge
from service.gateway.validation import check_inputs
from tests.helpers import TWO_FEATURE_CARD


def test_inputs_are_checked_by_name_type_shape_and_finiteness() -> None:
    limits = LimitsConfig()
    assert check_inputs(TWO_FEATURE_CARD, {"X": np.ones((2, 2), np.float32)}, limits) == 2
    refused = {
        "missing input": {"z": np.ones((1, 2), np.float32)},
        "unknown input": {"X": np.ones((1, 2), np.float32), "z": np.ones(1)},
        "must be FP32": {"X": np.ones((1, 2), np.float64)},
        "has shape": {"X": np.ones((1, 3), np.float32)},
        "NaN or infinity": {"X": np.array([[1, np.nan]], np.float32)},
        "empty batch": {"X": np.ones((0, 2), np.float32)},
    }
    for message, tensors in refused.items():
        with pytest.raises(BadRequest, match=message):
            check_inputs(TWO_FEATURE_CARD, tensors, limits)
    infinite = np.full((1, 2), np.inf, np.float32)
    assert check_inputs(TWO_FEATURE_CARD, {"X": infinite}, LimitsConfig(allow_non_finite=True)) == 1
    with pytest.raises(PayloadTooLarge, match="3 rows is over the limit of 2"):
        check_inputs(TWO_FEATURE_CARD, {"X": np.ones((3, 2), np.float32)}, LimitsConfig(max_rows=2))
