"""The model registry: model versions in BentoML's model store, each with its card and reference data.

Why BentoML's store: the tags (``name:version``), listing, export/import and ``bentoml build``
packaging come for free, and operators already know ``bentoml models list``. Each entry's directory
holds ``model.onnx``, ``gateway.json`` (the ``ModelCard``) and ``reference.parquet`` (the reference
sample: features, labels and the model's own predictions on them, which drift and the offline gate
compare against).

BentoML reads its home (``BENTOML_HOME``) once at import: callers that need another store set the
environment variable before importing this module (``service.cli`` does).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import BentoMLException, NotFound

from service.errors import ConfigError
from service.model_card import (
    CARD_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    ModelCard,
    inspect_onnx,
    pick_task_outputs,
)
from service.names import LATEST, NAME_RULE, is_name
from service.runtime import ModelSession
from service.tensors import FLOAT_TYPES, INTEGER_TYPES, OIP_TO_NUMPY

log = logging.getLogger("gateway.registry")
MAX_REFERENCE_ROWS = 50_000
PREDICTION_COLUMN = "prediction"
ACCURATE_SHARE = 0.95
"""A regressor is as accurate on its reference as a classifier right 95% of the time: the
accuracy comparison's default margin (0.03) then means what it means for such a classifier, and
a rate far from 1/2 needs far fewer samples to judge (two equal arms with 3,000 labeled answers
each passed that margin in 29 of 40 draws at 95%, in 1 of 40 at 50%, the median's share)."""
PROBABILITY_PREFIX = "proba_"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file of reference rows."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            _check_unique_header(path)
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read reference data {path}: {error}") from None
    raise ConfigError(f"reference data must be .csv or .parquet, got {path.name}")


def _check_unique_header(path: Path) -> None:
    """Refuse a CSV whose header names a column twice: pandas renames the second one
    (``mean_radius.1``), which would then be the feature's name in requests, drift and
    explanations, without a word."""
    header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
    repeated = sorted({str(name) for name in header if header.count(name) > 1})
    if repeated:
        raise ConfigError(f"reference data {path.name} names columns more than once: {repeated}")


def _check_reference(card_inputs, reference: pd.DataFrame, label_column: str) -> list[str]:
    """Check the reference against the graph; return the feature column names in input order."""
    if len(card_inputs) != 1 or len(card_inputs[0].shape) != 2:
        shapes = {t.name: list(t.shape) for t in card_inputs}
        raise ConfigError(
            f"the gateway serves tabular models with one [rows, features] input; this graph has "
            f"inputs {shapes}"
        )
    feature_input = card_inputs[0]
    if feature_input.datatype == "BYTES":
        raise ConfigError(
            f"input {feature_input.name!r} takes text (BYTES); the gateway serves models whose "
            f"features are numbers (plain JSON rows, drift and explanations take numbers): "
            f"encode text features before the model, or give the graph a numeric input"
        )
    if not feature_input.batched:
        raise ConfigError(
            f"input {feature_input.name!r} has the fixed shape {list(feature_input.shape)}; the "
            f"gateway serves models that take any number of rows: export the graph with a "
            f"variable first dimension (torch.onnx.export: dynamic_axes={{name: {{0: 'rows'}}}})"
        )
    if label_column not in reference.columns:
        raise ConfigError(
            f"reference data has no label column {label_column!r} (columns: "
            f"{list(reference.columns)[:12]}...); name it with --label-column"
        )
    unlabeled = int(reference[label_column].isna().sum())
    if unlabeled:
        raise ConfigError(
            f"reference data has {unlabeled} rows without a label in {label_column!r}"
        )
    ignored = {label_column, PREDICTION_COLUMN}
    features = [
        c for c in reference.columns if c not in ignored and not c.startswith(PROBABILITY_PREFIX)
    ]
    width = feature_input.shape[1]
    if width != -1 and len(features) != width:
        raise ConfigError(
            f"schema mismatch: input {feature_input.name!r} takes {width} features but the "
            f"reference data has {len(features)} feature columns ({features[:8]}...)"
        )
    if not features:
        raise ConfigError("reference data has no feature columns")
    if len(reference) == 0:
        raise ConfigError("reference data has no rows")
    if feature_input.datatype in FLOAT_TYPES | INTEGER_TYPES:
        non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(reference[c])]
        if non_numeric:
            raise ConfigError(
                f"schema mismatch: input {feature_input.name!r} is {feature_input.datatype} but "
                f"reference columns {non_numeric[:8]} are not numeric"
            )
        _check_finite(reference[features], feature_input.datatype)
    return features


def _check_finite(features: pd.DataFrame, datatype: str) -> None:
    """Refuse reference features that are not finite numbers in the model's input type (NaN,
    infinity, or beyond its range: 1e39 is infinity in FP32). Requests with them are refused
    unless a variant allows them, and the reference is what drift and the offline gate compare
    against: an infinity there made its column's drift score NaN, never flagged."""
    values = features.to_numpy(dtype=np.float64)
    if datatype in FLOAT_TYPES:
        with np.errstate(over="ignore"):
            values = values.astype(OIP_TO_NUMPY[datatype])
    finite = np.isfinite(values).all(axis=0)
    bad = [column for column, ok in zip(features.columns, finite) if not ok]
    if bad:
        raise ConfigError(
            f"reference data has values that are not finite numbers in {datatype} (missing, "
            f"infinite or out of range) in feature columns {bad[:8]}"
        )


def run_on_rows(model_path: Path, card: ModelCard, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every output of the model for a table of reference rows, on the CPU (offline work:
    registration, the rollouts' offline gate). ``ConfigError`` if it does not load or run."""
    try:
        session = ModelSession(model_path, card, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise ConfigError(f"onnxruntime cannot load the model: {error}") from None
    dtype = OIP_TO_NUMPY[card.feature_input.datatype]
    features = rows[list(card.feature_names)].to_numpy(dtype=dtype)
    try:
        return session.run({card.feature_input.name: features})
    except Exception as error:  # onnxruntime raises its own exception types
        raise ConfigError(f"the model fails on its reference data: {error}") from None


def _as_classes(labels: pd.Series, classes: tuple) -> pd.Series:
    """The reference's labels in the type of the model's classes: a CSV reads the classes "0",
    "1", "2" of a model trained on text labels as the numbers 0, 1, 2 (and a Parquet file may hold
    the numbers of a model's integer classes as text)."""
    if all(isinstance(c, str) for c in classes) and labels.dtype != object:
        return labels.astype(str)
    if all(isinstance(c, int) for c in classes) and labels.dtype == object:
        numbers = pd.to_numeric(labels, errors="coerce")
        if numbers.notna().all() and (numbers == numbers.round()).all():
            return numbers.astype("int64")
    return labels


def _check_numeric_labels(labels: pd.Series) -> None:
    """A regressor's reference labels are finite numbers: its offline gate measures a
    candidate's error against them (a text label failed every rollout's gate later, with a
    message about floats)."""
    values = pd.to_numeric(labels, errors="coerce")
    bad = labels[values.isna() | ~np.isfinite(values.fillna(0))]
    if len(bad):
        raise ConfigError(
            f"a regressor's reference labels are finite numbers; {len(bad)} of {labels.name!r} "
            f"are not, such as {str(bad.iloc[0])!r}"
        )


def _check_predicted_labels(predicted: np.ndarray, class_labels: tuple) -> None:
    """Refuse a model whose label output names classes other than its card's: its answers, its
    probability columns and the monitor's accuracy would each speak of different classes. (A
    graph that does not store its classes, such as skl2onnx's for double inputs, takes them from
    the reference's labels, which must then be the ones the model predicts.)"""
    strange = set(np.unique(predicted).tolist()) - set(class_labels)
    if strange:
        raise ConfigError(
            f"the model predicts labels {sorted(strange, key=str)[:8]} on its reference data, "
            f"which are not among its classes {list(class_labels)[:8]}: the reference's label "
            f"column must hold the labels the model predicts"
        )


def _check_probability_order(
    card: ModelCard, predicted: pd.Series, probabilities: np.ndarray
) -> None:
    """Refuse probability columns named in another order than the model's own: where the label
    output names a class, the column ranked first must mostly be that class's. Named the wrong
    way round (``--class-labels malignant,benign`` for a model whose first column is benign),
    every answer said "benign" with 99% on "malignant", and explanations explained the other
    class. Mostly, not always: a graph may decide with a threshold of its own."""
    classes = np.asarray([str(c) for c in card.class_labels], dtype=object)
    ranked = classes[probabilities.argmax(axis=1)]
    named = predicted.astype(str).to_numpy()
    for label in np.unique(named):
        if (ranked[named == label] == label).mean() < 0.5:
            raise ConfigError(
                f"output {card.probability_output!r} ranks another class first in most rows "
                f"where output {card.label_output!r} names {label!r}: its columns are not in "
                f"the order of the class labels {list(classes)[:8]} (--class-labels names the "
                f"classes in the order of the probability columns)"
            )


def _check_one_answer_per_row(card: ModelCard, outputs: dict[str, np.ndarray], rows: int) -> None:
    """Refuse a model that does not answer one label or value (and one row of probabilities) per
    row it is given, such as a regressor of several targets: its answers could not be told
    apart by row, and each caller would get other rows' predictions."""
    for name in (card.label_output, card.value_output):
        if name is not None and np.asarray(outputs[name]).size != rows:
            raise ConfigError(
                f"output {name!r} gives {np.asarray(outputs[name]).size} values for {rows} "
                f"reference rows; the gateway serves models that answer one per row"
            )
    probabilities = card.probability_output
    if probabilities is not None and len(outputs[probabilities]) != rows:
        raise ConfigError(
            f"output {probabilities!r} gives {len(outputs[probabilities])} rows for {rows} "
            f"reference rows; the gateway serves models that answer one per row"
        )


def _reference_with_predictions(
    model_path: Path, card: ModelCard, reference: pd.DataFrame
) -> pd.DataFrame:
    """The reference rows plus the model's own predictions on them."""
    outputs = run_on_rows(model_path, card, reference)
    _check_one_answer_per_row(card, outputs, len(reference))
    table = reference[[*card.feature_names, card.label_column]].copy()
    if card.task == "classification":
        if card.label_output:
            predicted = np.asarray(outputs[card.label_output]).reshape(-1)
            _check_predicted_labels(predicted, card.class_labels)
            table[PREDICTION_COLUMN] = predicted
        if card.probability_output:
            probabilities = np.asarray(outputs[card.probability_output])
            if card.class_labels and probabilities.shape[1] != len(card.class_labels):
                raise ConfigError(
                    f"output {card.probability_output!r} has {probabilities.shape[1]} columns but "
                    f"there are {len(card.class_labels)} class labels {list(card.class_labels)}"
                )
            if card.label_output:
                _check_probability_order(card, table[PREDICTION_COLUMN], probabilities)
            for index, label in enumerate(card.class_labels):
                table[f"{PROBABILITY_PREFIX}{label}"] = probabilities[:, index]
            if not card.label_output:
                labels = np.asarray(card.class_labels, dtype=object)
                table[PREDICTION_COLUMN] = labels[probabilities.argmax(axis=1)]
    else:
        _check_numeric_labels(table[card.label_column])
        table[PREDICTION_COLUMN] = np.asarray(outputs[card.value_output]).reshape(-1)
    return table


def add_model(
    model_file: Path,
    name: str,
    reference_file: Path,
    *,
    version: str | None = None,
    task: str = "auto",
    label_column: str = "label",
    class_labels: list | None = None,
) -> ModelCard:
    """Validate an ONNX file against its reference data and store both as ``name:version``."""
    given = {"name": name, "version": version} if version else {"name": name}  # else generated
    for what, value in given.items():
        if not is_name(value):
            raise ConfigError(f"a model's {what} must be {NAME_RULE}, got {value!r}")
    if version and version.lower() == LATEST:
        raise ConfigError(f"{LATEST!r} is BentoML's alias for a model's newest version: name one")
    model_file, reference_file = Path(model_file), Path(reference_file)
    if not model_file.is_file():
        raise ConfigError(f"model file {model_file} does not exist")
    signature = inspect_onnx(model_file)
    task_name, label_output, probability_output, value_output = pick_task_outputs(
        signature.outputs, task
    )
    reference = read_table(reference_file)
    features = _check_reference(signature.inputs, reference, label_column)
    if len(reference) > MAX_REFERENCE_ROWS:
        reference = reference.sample(MAX_REFERENCE_ROWS, random_state=0)
    labels: tuple = ()
    if task_name == "classification":
        labels = tuple(class_labels or signature.graph_class_labels) or tuple(
            sorted(reference[label_column].unique().tolist())
        )
        reference = reference.assign(**{label_column: _as_classes(reference[label_column], labels)})
        unknown = set(reference[label_column].unique().tolist()) - set(labels)
        if unknown:
            raise ConfigError(
                f"reference labels {sorted(unknown)[:8]} are not among the model's classes "
                f"{list(labels)}"
            )
    card = ModelCard(
        name=name,
        version=version or "",
        sha256=_sha256(model_file),
        task=task_name,
        inputs=signature.inputs,
        outputs=signature.outputs,
        feature_names=tuple(features),
        label_column=label_column,
        class_labels=labels,
        label_output=label_output,
        probability_output=probability_output,
        value_output=value_output,
        reference_rows=len(reference),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    table = _reference_with_predictions(model_file, card, reference)
    tag = f"{name}:{version}" if version else name
    try:
        with bentoml.models.create(
            tag, labels={"task": task_name}, metadata={"sha256": card.sha256, "gateway": "onnx"}
        ) as entry:
            stored = Path(entry.path)  # its tag as stored: BentoML lowercases name and version
            card = ModelCard(
                **{**card.__dict__, "name": entry.tag.name, "version": entry.tag.version}
            )
            shutil.copyfile(model_file, stored / MODEL_FILE)
            table.to_parquet(stored / REFERENCE_FILE, index=False)
            (stored / CARD_FILE).write_text(card.to_json())
    except BentoMLException as error:
        raise ConfigError(f"cannot store {tag}: {error}") from None
    return card


def model_dir(tag: str) -> Path:
    """The store directory of a registered model version; ``ConfigError`` if it is not there."""
    try:
        entry = bentoml.models.get(tag)
    except (NotFound, BentoMLException, ValueError):
        raise ConfigError(f"model {tag} is not in the model store") from None
    path = Path(entry.path)
    if not (path / CARD_FILE).is_file():
        raise ConfigError(f"model {tag} was not added by the gateway (no {CARD_FILE})")
    return path


def load_card(tag: str) -> ModelCard:
    return ModelCard.read(model_dir(tag))


def load_reference(tag: str) -> pd.DataFrame:
    """A model version's reference rows; ``ConfigError`` when they cannot be read (as its card)."""
    path = model_dir(tag) / REFERENCE_FILE
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's errors are both kinds
        raise ConfigError(f"the reference data {path} cannot be read: {error!r}") from None


@functools.cache
def accuracy_tolerance(tag: str) -> float | None:
    """How close to its label a regressor's answer must be to count as accurate (rollouts and
    experiments count accurate answers, as for classifiers): the ``ACCURATE_SHARE`` quantile of
    the model's absolute errors on its own reference. It is fixed before any traffic, so
    comparing two arms' accurate shares stays an exact test of two rates. None for a
    classifier, whose answer is accurate when it is the label. Read once per tag: a version's
    card and reference never change (a tag not in the store raises ``ConfigError``, not kept)."""
    card = load_card(tag)
    if card.task != "regression":
        return None
    reference = load_reference(tag)
    errors = (reference[PREDICTION_COLUMN] - reference[card.label_column]).abs()
    return float(errors.quantile(ACCURATE_SHARE))


def list_cards() -> list[ModelCard]:
    """Every gateway model in the store, newest first; one whose card cannot be read is left
    out with a warning naming it."""
    cards = []
    for entry in bentoml.models.list():
        card_path = Path(entry.path) / CARD_FILE
        if card_path.is_file():
            try:
                cards.append(ModelCard.read(Path(entry.path)))
            except ConfigError as error:
                log.warning("%s left out: %s", entry.tag, error)
    return sorted(cards, key=lambda card: card.created_at, reverse=True)
