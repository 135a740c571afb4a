"""Open Inference Protocol v2 REST bodies, JSON and with Triton's binary tensor extension.

The binary extension puts raw little-endian tensors after the JSON header; the header's length comes
in ``Inference-Header-Content-Length``. Inputs sent that way carry ``parameters.binary_data_size``
instead of ``data``; outputs are sent that way when asked for (``parameters.binary_data`` per output,
or ``binary_data_output`` for all). Every way a body can be malformed is a ``BadRequest`` naming it.
"""

from __future__ import annotations

import math
import struct

import msgspec
import numpy as np

from service.codecs import decode_json
from service.errors import BadRequest
from service.model_card import ModelCard
from service.tensors import OIP_TO_NUMPY, Tensors, integer_problem, oip_datatype_of

HEADER_LENGTH = "inference-header-content-length"
MAX_RANK = 32
"""No model the gateway serves takes tensors of more dimensions (numpy's own limit is 64)."""
FITTING_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}
"""numpy kinds of JSON data that fit a datatype of each kind (bool, int, unsigned, float)."""


class InferRequest(msgspec.Struct, frozen=True):
    """A decoded infer request: tensors by name and how the caller wants the outputs."""

    id: str | None
    inputs: Tensors
    outputs: tuple[str, ...] | None
    binary_outputs: frozenset[str]
    all_binary: bool
    parameters: dict

    @property
    def fields(self) -> dict:
        """Where a routing key may come from: the request's parameters."""
        return self.parameters

    def tensors(self, card: ModelCard) -> Tensors:
        """The input tensors, once the outputs asked for are known to be the routed model's."""
        if self.outputs is not None:
            known = {s.name for s in card.outputs}
            unknown = sorted(set(self.outputs) - known)
            if unknown:
                raise BadRequest(
                    f"unknown output(s) {unknown}; model {card.tag} has {sorted(known)}"
                )
        return self.inputs


def checked_shape(shape: object, name: str) -> tuple[int, ...]:
    """An input's shape as the protocol allows it (a list of at most ``MAX_RANK`` sizes)."""
    if not isinstance(shape, list):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise BadRequest(f"input {name!r}: shape has {len(shape)} dimensions, at most {MAX_RANK}")
    for size in shape:  # a loop: a generator costs twice as much, on every request
        if type(size) is not int or size < 0:  # bool is an int, but not a size
            raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _from_json_data(data: object, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be a list")
    try:
        raw = np.asarray(data, dtype=object if datatype == "BYTES" else None)
    except ValueError:
        raise BadRequest(f"input {name!r}: 'data' is ragged (rows of different lengths)") from None
    if raw.size != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, got {raw.size}"
        )
    kind = raw.dtype.kind
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in raw.flat):
            raise BadRequest(f"input {name!r}: BYTES data must be strings")
        return raw.reshape(shape)
    target = OIP_TO_NUMPY[datatype]
    if raw.size and kind not in FITTING_KINDS[target.kind]:
        raise BadRequest(f"input {name!r}: data does not fit datatype {datatype}")
    if target.kind in "iu" and kind in "iu":
        problem = integer_problem(raw, datatype)
        if problem is not None:
            raise BadRequest(f"input {name!r}: values {problem}")
    return raw.astype(target).reshape(shape)


def _split_bytes_tensor(blob: bytes, count: int, name: str) -> np.ndarray:
    items, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise BadRequest(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise BadRequest(f"input {name!r}: BYTES element runs past binary_data_size")
        try:
            items.append(blob[offset : offset + length].decode())
        except UnicodeDecodeError:
            raise BadRequest(f"input {name!r}: BYTES element is not UTF-8") from None
        offset += length
    if len(items) != count:
        raise BadRequest(f"input {name!r}: shape needs {count} BYTES elements, got {len(items)}")
    return np.array(items, dtype=object)


def from_raw(blob: bytes, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: each element's length, then it)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _split_bytes_tensor(blob, count, name).reshape(shape)
    dtype = OIP_TO_NUMPY[datatype].newbyteorder("<")
    if len(blob) != count * dtype.itemsize:
        raise BadRequest(
            f"input {name!r}: binary_data_size {len(blob)} does not match shape {list(shape)} "
            f"of {datatype} ({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(blob, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest("Inference-Header-Content-Length must be an integer") from None
    if not 0 < length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes"
        )
    return body[:length], body[length:]


def _parameters(holder: dict, what: str, name: str | None = None) -> dict:
    """``holder``'s parameters; a 400 naming ``what`` (and ``name``) when they are not an object
    (the message is made only then: this runs for every tensor of every request)."""
    parameters = holder.get("parameters") or {}
    if not isinstance(parameters, dict):
        where = what if name is None else f"{what} {name!r}"
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return parameters


def decode_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an infer body (JSON, or JSON header + binary tensors)."""
    header, binary = _split_body(body, header_length)
    request = decode_json(header)
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    inputs: Tensors = {}
    offset = 0
    for position, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f"inputs[{position}] must be an object with a string 'name'")
        name = tensor["name"]
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in OIP_TO_NUMPY:
            raise BadRequest(
                f"input {name!r}: unknown datatype {datatype!r}; one of {sorted(OIP_TO_NUMPY)}"
            )
        shape = checked_shape(tensor.get("shape"), name)
        size = _parameters(tensor, "input", name).get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
            inputs[name] = _from_json_data(tensor["data"], datatype, shape, name)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise BadRequest(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} binary bytes left)"
            )
        inputs[name] = from_raw(binary[offset : offset + size], datatype, shape, name)
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} trailing binary bytes after the last input")
    return _with_output_request(request, inputs)


def _with_output_request(request: dict, inputs: Tensors) -> InferRequest:
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(request, "request")
    all_binary = bool(parameters.get("binary_data_output", False))
    raw_outputs = request.get("outputs")
    if raw_outputs is None:
        return InferRequest(request_id, inputs, None, frozenset(), all_binary, parameters)
    if not isinstance(raw_outputs, list):
        raise BadRequest("'outputs' must be a list")
    names, binary = [], set()
    for position, output in enumerate(raw_outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise BadRequest(f"outputs[{position}] must be an object with a string 'name'")
        names.append(output["name"])
        if _parameters(output, "output", output["name"]).get("binary_data", False):
            binary.add(output["name"])
    return InferRequest(request_id, inputs, tuple(names), frozenset(binary), all_binary, parameters)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """A tensor as raw little-endian bytes (BYTES: each element's length in 4 bytes, then it)."""
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _json_data(array: np.ndarray, datatype: str) -> list:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return flat.tolist()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Tensors,
    parameters: dict | None = None,
) -> tuple[bytes, int | None]:
    """The answer body, and the JSON header's length when binary tensors follow it (else None);
    ``parameters``: the answer's own (the gateway's request id)."""
    names = request.outputs if request.outputs is not None else tuple(outputs)
    header_outputs, blobs = [], []
    for name in names:
        array = outputs[name]
        datatype = oip_datatype_of(array)
        tensor: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.all_binary or name in request.binary_outputs:
            blob = to_raw(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = _json_data(array, datatype)
        header_outputs.append(tensor)
    answer: dict = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        answer["id"] = request.id
    if parameters:
        answer["parameters"] = parameters
    answer["outputs"] = header_outputs
    header = msgspec.json.encode(answer)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
