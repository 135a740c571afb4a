"""``ModelInferRequest`` messages to the gateway's ``InferRequest`` and answers back to
``ModelInferResponse``: the gRPC twin of service/codecs/oip.py, with the same checks and the same
errors (a ``BadRequest`` naming what is wrong), so both protocols refuse the same things.

Inputs come either typed (``contents``, one repeated field per datatype) or raw
(``raw_input_contents``, one little-endian blob per input, as tritonclient sends them); outputs go
back the way the inputs came.
"""

from __future__ import annotations

import math

import numpy as np

from service.codecs.oip import InferRequest, checked_shape, from_raw, to_raw
from service.errors import BadRequest
from service.gateway.grpc import inference_pb2 as pb
from service.tensors import OIP_TO_NUMPY, Tensors, integer_problem, oip_datatype_of

CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Which typed field carries each datatype (FP16 and BF16 travel raw only)."""


def parameter_value(parameter: pb.InferParameter) -> object:
    """The value an ``InferParameter`` holds (None when it holds none)."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def _typed(tensor, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    field = CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: {datatype} travels in raw_input_contents only")
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, "
            f"got {len(values)} in contents.{field}"
        )
    if datatype == "BYTES":
        try:
            return np.array([v.decode() for v in values], dtype=object).reshape(shape)
        except UnicodeDecodeError:
            raise BadRequest(f"input {name!r}: BYTES element is not UTF-8") from None
    target = OIP_TO_NUMPY[datatype]
    array = np.asarray(values, dtype=np.float64 if target.kind == "f" else None)
    if target.kind in "iu":
        problem = integer_problem(array, datatype)
        if problem is not None:
            raise BadRequest(f"input {name!r}: values {problem}")
    return array.astype(target).reshape(shape)


def decode_infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """The gateway's view of a gRPC infer request (``BadRequest`` saying what is wrong)."""
    if not request.inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} tensors for {len(request.inputs)} inputs: "
            "give every input raw, or none"
        )
    inputs: Tensors = {}
    for position, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        if tensor.datatype not in OIP_TO_NUMPY:
            raise BadRequest(
                f"input {name!r}: unknown datatype {tensor.datatype!r}; one of "
                f"{sorted(OIP_TO_NUMPY)}"
            )
        shape = checked_shape(list(tensor.shape), name)
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input {name!r} has both contents and raw_input_contents")
            inputs[name] = from_raw(raw[position], tensor.datatype, shape, name)
        else:
            inputs[name] = _typed(tensor, tensor.datatype, shape, name)
    parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
    outputs = tuple(o.name for o in request.outputs) or None
    return InferRequest(request.id or None, inputs, outputs, frozenset(), bool(raw), parameters)


def _contents(array: np.ndarray, datatype: str) -> pb.InferTensorContents:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        values = [x if isinstance(x, bytes) else str(x).encode() for x in flat]
    else:
        values = flat.tolist()
    return pb.InferTensorContents(**{CONTENTS[datatype]: values})


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Tensors,
    request_id: str,
) -> pb.ModelInferResponse:
    """The answer: the outputs asked for (all, when none were), raw when the inputs came raw or a
    datatype has no typed field; the gateway's request id in ``parameters.request_id``."""
    names = request.outputs if request.outputs is not None else tuple(outputs)
    response = pb.ModelInferResponse(
        model_name=model_name,
        model_version=model_version,
        id=request.id or "",
        parameters={"request_id": pb.InferParameter(string_param=request_id)},
    )
    arrays = [(name, outputs[name], oip_datatype_of(outputs[name])) for name in names]
    raw = request.all_binary or any(datatype not in CONTENTS for _, _, datatype in arrays)
    for name, array, datatype in arrays:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(to_raw(array, datatype))
        else:
            tensor.contents.CopyFrom(_contents(array, datatype))
    return response
