"""What a caller of one model version would find different in another (service/model_card.py)."""

from __future__ import annotations

from dataclasses import replace

from service.tensors import TensorSpec
from tests.helpers import TWO_FEATURE_CARD


def test_a_retrained_version_with_the_same_inputs_differs_in_nothing_callers_see() -> None:
    retrained = replace(
        TWO_FEATURE_CARD,
        version="v2",
        sha256="1" * 64,
        inputs=(TensorSpec("X", "FP32", (1, 2)),),
        outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))),
        class_labels=(0, 1, 2),
    )
    assert TWO_FEATURE_CARD.difference_for_callers(retrained) is None


def test_task_inputs_and_features_that_differ_are_named() -> None:
    card = TWO_FEATURE_CARD
    differences = {
        "is a regression model, not a classification one": replace(card, task="regression"),
        "takes inputs [('X', 'FP64', [2])], not [('X', 'FP32', [2])]": replace(
            card, inputs=(TensorSpec("X", "FP64", (-1, 2)),)
        ),
        "takes inputs [('input', 'FP32', [2])]": replace(
            card, inputs=(TensorSpec("input", "FP32", (-1, 2)),)
        ),
        "takes inputs [('X', 'FP32', [3])]": replace(
            card, inputs=(TensorSpec("X", "FP32", (-1, 3)),), feature_names=("a", "b", "c")
        ),
        "takes features ['c'] from position 1, not ['b']": replace(card, feature_names=("a", "c")),
        "takes features ['b', 'a'] from position 0, not ['a', 'b']": replace(
            card, feature_names=("b", "a")
        ),
    }
    for words, other in differences.items():
        difference = card.difference_for_callers(other)
        assert difference is not None and words in difference, (words, difference)
