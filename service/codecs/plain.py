"""The plain JSON prediction API: ``{"instances": [row, ...]}`` in, one prediction per row out.

A row is a list of feature values in the model's order, or an object ``{feature: value}``. A
prediction is ``{"label", "probabilities": {class: p}}`` for a classifier and ``{"value"}`` for a
regressor.
"""

from __future__ import annotations

import msgspec
import numpy as np

from service.codecs import decode_json
from service.errors import BadRequest
from service.model_card import ModelCard
from service.tensors import INTEGER_TYPES, OIP_TO_NUMPY, Tensors, integer_problem


class PlainRequest(msgspec.Struct, frozen=True):
    """A decoded ``/predict`` body: its rows, and the fields a routing key may come from."""

    instances: list
    fields: dict

    def tensors(self, card: ModelCard) -> Tensors:
        """The rows as the routed model's input tensor."""
        return instances_to_tensors(self.instances, card)


def decode_plain(body: bytes, key_field: str | None = None) -> PlainRequest:
    """A ``/predict`` body, checked for shape but not yet against a model."""
    return PlainRequest(*decode_instances(body, key_field))


def decode_instances(body: bytes, key_field: str | None = None) -> tuple[list, dict]:
    """The request's rows (not yet checked against a model) and its routing-key field, if any."""
    request = decode_json(body)
    if not isinstance(request, dict) or "instances" not in request:
        raise BadRequest('the body must be a JSON object {"instances": [row, ...]}')
    allowed = {"instances", key_field} if key_field else {"instances"}
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; the body takes only {sorted(allowed)}")
    instances = request["instances"]
    if not isinstance(instances, list):
        raise BadRequest("'instances' must be a list of rows")
    if not instances:
        raise BadRequest("empty batch: 'instances' has no rows")
    return instances, {key_field: request[key_field]} if key_field in request else {}


def _record_to_row(record: dict, card: ModelCard, position: int) -> list:
    missing = [f for f in card.feature_names if f not in record]
    if missing:
        raise BadRequest(f"instances[{position}] is missing feature(s) {missing[:10]}")
    if len(record) != len(card.feature_names):
        unknown = sorted(set(record) - set(card.feature_names))
        raise BadRequest(f"instances[{position}] has unknown feature(s) {unknown[:10]}")
    return [record[f] for f in card.feature_names]


def instances_to_tensors(instances: list, card: ModelCard) -> Tensors:
    """Pack rows into the model's [rows, features] input, in the model's feature order."""
    rows = [
        _record_to_row(row, card, i) if isinstance(row, dict) else row
        for i, row in enumerate(instances)
    ]
    width = len(card.feature_names)
    for position, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadRequest(f"instances[{position}] must be a list or an object of features")
        if len(row) != width:
            raise BadRequest(
                f"instances[{position}] has {len(row)} values; model {card.tag} takes {width} "
                f"features {list(card.feature_names)[:10]}"
            )
    spec = card.feature_input
    try:
        array = np.asarray(rows)
    except ValueError:
        raise BadRequest("instances must hold only numbers") from None
    if array.dtype.kind == "O" and all(type(v) in (int, float) for v in array.flat):
        try:  # an integer past 64 bits: JSON has no limit
            array = array.astype(np.float64)
        except OverflowError:
            raise BadRequest(
                f"model {card.tag} takes {spec.datatype} features; these instances hold a number "
                f"too large for them"
            ) from None
    if array.dtype.kind not in "biuf":
        raise BadRequest("instances must hold only numbers")
    if spec.datatype in INTEGER_TYPES:
        problem = integer_problem(array, spec.datatype)
        if problem is not None:
            raise BadRequest(
                f"model {card.tag} takes {spec.datatype} features; these instances {problem}"
            )
    return {spec.name: array.astype(OIP_TO_NUMPY[spec.datatype])}


class PredictionEncoder:
    """Turns a model's outputs into per-row predictions; one per model version (labels cached)."""

    @staticmethod
    def of(card: ModelCard) -> PredictionEncoder:
        """The encoder of a model version, built once per tag (a tag's card never changes)."""
        encoder = _ENCODERS.get(card.tag)
        if encoder is None:
            encoder = _ENCODERS[card.tag] = PredictionEncoder(card)
        return encoder

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.class_keys = [str(label) for label in card.class_labels]
        self.class_labels = np.asarray(card.class_labels, dtype=object)

    def predictions(self, outputs: Tensors) -> list[dict]:
        card = self.card
        if card.task == "regression":
            return [{"value": v} for v in outputs[card.value_output].reshape(-1).tolist()]
        probabilities = (
            outputs[card.probability_output].tolist() if card.probability_output else None
        )
        if card.label_output:
            labels = outputs[card.label_output].reshape(-1)
            labels = [x.decode() if isinstance(x, bytes) else x for x in labels.tolist()]
        else:
            labels = self.class_labels[np.asarray(probabilities).argmax(axis=1)].tolist()
        if probabilities is None:
            return [{"label": label} for label in labels]
        keys = self.class_keys
        return [
            {"label": label, "probabilities": dict(zip(keys, row))}
            for label, row in zip(labels, probabilities)
        ]


_ENCODERS: dict[str, PredictionEncoder] = {}


def row_predictions(card: ModelCard, outputs: Tensors) -> np.ndarray:
    """One prediction per row: the label for classifiers, the value for regressors."""
    if card.task == "regression":
        return outputs[card.value_output].reshape(-1)
    if card.label_output:
        return outputs[card.label_output].reshape(-1)
    labels = np.asarray(card.class_labels, dtype=object)
    return labels[outputs[card.probability_output].argmax(axis=1)]
