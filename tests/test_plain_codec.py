"""The plain JSON API's rows: lists or records in, labelled predictions out."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from service.codecs.plain import PredictionEncoder, decode_instances, instances_to_tensors
from service.errors import BadRequest
from service.model_card import ModelCard
from service.tensors import TensorSpec
from tests.helpers import TWO_FEATURE_CARD

CARD = TWO_FEATURE_CARD


def test_lists_and_records_give_the_same_tensor():
    instances, fields = decode_instances(
        json.dumps({"instances": [[1, 2], {"b": 4, "a": 3}]}).encode()
    )
    assert fields == {}
    tensors = instances_to_tensors(instances, CARD)
    np.testing.assert_array_equal(tensors["X"], np.array([[1, 2], [3, 4]], np.float32))
    assert tensors["X"].dtype == np.float32


def test_predictions_carry_label_and_named_probabilities():
    outputs = {
        "label": np.array(["yes"], object),
        "probabilities": np.array([[0.25, 0.75]], np.float32),
    }
    assert PredictionEncoder(CARD).predictions(outputs) == [
        {"label": "yes", "probabilities": {"no": 0.25, "yes": 0.75}}
    ]


def test_label_from_probabilities_when_the_model_has_no_label_output():
    card = ModelCard(**{**CARD.__dict__, "label_output": None})
    outputs = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)}
    labels = [p["label"] for p in PredictionEncoder(card).predictions(outputs)]
    assert labels == ["no", "yes"]


def test_the_routing_key_field_is_allowed_only_when_configured():
    body = json.dumps({"instances": [[1, 2]], "user": "u-1"}).encode()
    assert decode_instances(body, "user")[1] == {"user": "u-1"}
    with pytest.raises(BadRequest, match="unknown field"):
        decode_instances(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"nope", "malformed JSON"),
        (b"[]", "instances"),
        (b'{"rows": [[1, 2]]}', "instances"),
        (b'{"instances": [[1, 2]], "extra": 1}', "unknown field"),
        (b'{"instances": {}}', "must be a list"),
        (b'{"instances": []}', "empty batch"),
        (b"NaN", "malformed JSON"),
        (b'{"instances": [[1, NaN]]}', "malformed JSON"),
    ],
)
def test_bad_bodies(body, reason):
    with pytest.raises(BadRequest, match=reason):
        decode_instances(body)


@pytest.mark.parametrize(
    ("instances", "reason"),
    [
        ([[1]], "has 1 values; model m:v1 takes 2"),
        ([{"a": 1}], "missing feature"),
        ([{"a": 1, "b": 2, "c": 3}], "unknown feature"),
        ([[1, "x"]], "only numbers"),
        ([[1, [2]]], "only numbers"),
        ([5], "must be a list or an object"),
    ],
)
def test_rows_that_do_not_fit_the_model(instances, reason):
    with pytest.raises(BadRequest, match=reason):
        instances_to_tensors(instances, CARD)


def test_a_model_taking_integers_gets_the_numbers_sent_or_a_400():
    """numpy's cast alone would answer on other numbers than the caller's: 1.5 as 1, 300 as 44
    in a UINT8, 1e30 as the smallest INT64."""
    int64 = replace(CARD, inputs=(TensorSpec("X", "INT64", (-1, 2)),))
    uint8 = replace(CARD, inputs=(TensorSpec("X", "UINT8", (-1, 2)),))
    tensors = instances_to_tensors([[1.0, 2], {"a": -3, "b": 4}], int64)
    np.testing.assert_array_equal(tensors["X"], np.array([[1, 2], [-3, 4]], np.int64))
    assert instances_to_tensors([[255, 0]], uint8)["X"].tolist() == [[255, 0]]
    assert instances_to_tensors([[1, 2**70]], CARD)["X"][0, 1] == np.float32(2**70)  # no limit
    refused = [
        (int64, [[1.5, 2]], "not all whole numbers"),
        (int64, [[float("nan"), 2]], "not all whole numbers"),
        (int64, [[1e30, 2]], r"out of range for INT64"),
        (int64, [[2**70, 2]], r"out of range for INT64"),
        (int64, [[2.0**63, 2]], r"out of range for INT64"),  # INT64's max, as a float
        (CARD, [[10**400, 2]], "too large"),
        (uint8, [[300, 1]], r"out of range for UINT8 \(0 to 255\)"),
        (uint8, [[-1, 1]], r"out of range for UINT8"),
    ]
    for card, instances, reason in refused:
        with pytest.raises(BadRequest, match=f"takes {card.feature_input.datatype}.*{reason}"):
            instances_to_tensors(instances, card)
