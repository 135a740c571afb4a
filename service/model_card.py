"""What the gateway knows about one registered model version, read from its ONNX graph.

A ``ModelCard`` is stored as ``gateway.json`` beside ``model.onnx`` and ``reference.parquet`` in the
model's directory of the BentoML model store. ``inspect_onnx`` builds its schema part and refuses
graphs the gateway cannot serve, saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from service.errors import ConfigError
from service.tensors import FLOAT_TYPES, TensorSpec, oip_datatype_of

Task = Literal["classification", "regression"]
CARD_FILE = "gateway.json"
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.parquet"


@dataclass(frozen=True)
class ModelCard:
    """A model version's identity, signature and task: everything needed to serve and watch it."""

    name: str
    version: str
    sha256: str
    task: Task
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    feature_names: tuple[str, ...]
    label_column: str
    class_labels: tuple = ()
    label_output: str | None = None
    probability_output: str | None = None
    value_output: str | None = None
    reference_rows: int = 0
    created_at: str = ""

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def feature_input(self) -> TensorSpec:
        """The single [rows, features] input that plain JSON rows are packed into."""
        return self.inputs[0]

    def difference_for_callers(self, other: ModelCard) -> str | None:
        """What a caller of this model would find different in ``other``: its task, its input
        tensors (names, datatypes, row shapes) or its features' names and order. None when every
        request this model takes, ``other`` takes too, and both answer the same kind of thing."""
        if other.task != self.task:
            return f"is a {other.task} model, not a {self.task} one"
        ours, theirs = (
            [(s.name, s.datatype, list(s.shape[1:])) for s in c.inputs] for c in (self, other)
        )
        if theirs != ours:
            return f"takes inputs {theirs}, not {ours} (name, datatype, row shape)"
        if other.feature_names != self.feature_names:
            where = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(self.feature_names, other.feature_names))
                    if a != b
                ),
                min(len(self.feature_names), len(other.feature_names)),
            )
            return (
                f"takes features {list(other.feature_names[where : where + 3])} from position "
                f"{where}, not {list(self.feature_names[where : where + 3])}"
            )
        return None

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        data["feature_names"] = list(self.feature_names)
        data["class_labels"] = list(self.class_labels)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}  # older cards
        data["inputs"] = tuple(TensorSpec.from_dict(t) for t in data["inputs"])
        data["outputs"] = tuple(TensorSpec.from_dict(t) for t in data["outputs"])
        data["feature_names"] = tuple(data["feature_names"])
        data["class_labels"] = tuple(data["class_labels"])
        return cls(**data)

    @classmethod
    def read(cls, directory: Path) -> ModelCard:
        """The card in a model's directory; ``ConfigError`` when it cannot be read (edited by
        hand, cut short): callers refuse or skip that model, as one not in the store, where the
        JSON's own error failed whatever touched it (the monitor's records of the model, the
        listing of every model)."""
        path = directory / CARD_FILE
        try:
            return cls.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"the model card {path} cannot be read: {error!r}") from None


@dataclass(frozen=True)
class GraphSignature:
    """The parts of an ONNX graph the gateway relies on."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    graph_class_labels: tuple


def _tensor_spec(value_info: onnx.ValueInfoProto, kind: str) -> TensorSpec:
    type_proto = value_info.type
    if not type_proto.HasField("tensor_type"):
        raise ConfigError(
            f"{kind} {value_info.name!r} is not a tensor ({type_proto.WhichOneof('value')}); "
            "the gateway serves tensor outputs only (for scikit-learn classifiers convert with "
            "skl2onnx options {'zipmap': False})"
        )
    tensor_type = type_proto.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        datatype = oip_datatype_of(np.empty(0, dtype=dtype))
    except (KeyError, TypeError, ValueError):
        type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ConfigError(
            f"{kind} {value_info.name!r} has unsupported element type {type_name}"
        ) from None
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, datatype, shape)


def _graph_class_labels(model: onnx.ModelProto) -> tuple:
    """Class labels stored in the graph by scikit-learn converters (classlabels_ints/strings)."""
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_ints" and attribute.ints:
                return tuple(int(x) for x in attribute.ints)
            if attribute.name == "classlabels_strings" and attribute.strings:
                return tuple(s.decode() for s in attribute.strings)
    return ()


def inspect_onnx(path: Path) -> GraphSignature:
    """Load and check an ONNX file; raise ``ConfigError`` saying what is wrong with it."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises DecodeError, ValidationError, OSError...
        raise ConfigError(f"{path} is not a valid ONNX model: {error}") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(
        _tensor_spec(i, "input") for i in model.graph.input if i.name not in initializers
    )
    outputs = tuple(_tensor_spec(o, "output") for o in model.graph.output)
    if not inputs or not outputs:
        raise ConfigError(f"{path}: the graph has no inputs or no outputs")
    return GraphSignature(inputs, outputs, _graph_class_labels(model))


def pick_task_outputs(
    outputs: tuple[TensorSpec, ...], task: str
) -> tuple[Task, str | None, str | None, str | None]:
    """Decide the task (when ``auto``) and which outputs carry label, probabilities or value."""
    label = next(
        (o.name for o in outputs if o.datatype not in FLOAT_TYPES and len(o.shape) in (1, 2)), None
    )
    floats = [o for o in outputs if o.datatype in FLOAT_TYPES]
    if task == "auto":
        task = "classification" if label is not None else "regression"
    if task == "classification":
        probability = next((o.name for o in floats if len(o.shape) == 2), None)
        if label is None and probability is None:
            raise ConfigError("classification model has neither a label nor a probability output")
        return "classification", label, probability, None
    if task == "regression":
        if not floats:
            raise ConfigError("regression model has no floating-point output")
        return "regression", None, None, floats[0].name
    raise ConfigError(f"task must be auto, classification or regression, got {task!r}")
