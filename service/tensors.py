"""Tensor datatypes and schemas, in the Open Inference Protocol's vocabulary.

One table maps OIP datatypes (``FP32``) to numpy dtypes; everything in the gateway speaks OIP names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_NUMPY_TO_OIP: dict[np.dtype, str] = {dtype: name for name, dtype in OIP_TO_NUMPY.items()}

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INTEGER_TYPES = frozenset(name for name in OIP_TO_NUMPY if name.startswith(("INT", "UINT")))

Tensors = dict[str, np.ndarray]
"""Named tensors: a model's inputs or outputs by name, as every layer passes them."""


def integer_problem(array: np.ndarray, datatype: str) -> str | None:
    """Why ``array``'s numbers would not stay themselves as ``datatype``'s integers (numpy's cast
    would truncate 1.5 to 1 and wrap 300 to 44 in a UINT8), or None when they would."""
    if not array.size:
        return None
    if array.dtype.kind == "f" and not np.array_equal(array, np.trunc(array)):
        return "are not all whole numbers"
    info = np.iinfo(OIP_TO_NUMPY[datatype])
    # as a float, the largest integer of the type rounds up to the first one past it (2**63 for
    # INT64), so floats are held to that one, exclusive
    too_large = array.max() >= info.max + 1 if array.dtype.kind == "f" else array.max() > info.max
    if array.min() < info.min or too_large:
        return f"are out of range for {datatype} ({info.min} to {info.max})"
    return None


def oip_datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (strings and objects are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = _NUMPY_TO_OIP.get(array.dtype)
    if name is not None:
        return name
    raise TypeError(f"no OIP datatype for numpy dtype {array.dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a model's signature; -1 in ``shape`` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def batched(self) -> bool:
        """True when the first dimension is variable, so rows of several requests can be stacked."""
        return len(self.shape) >= 1 and self.shape[0] == -1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(name=data["name"], datatype=data["datatype"], shape=tuple(data["shape"]))

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec (same rank, fixed dimensions equal)."""
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape):  # a loop: a generator costs twice as much
            if want != -1 and want != got:
                return False
        return True
