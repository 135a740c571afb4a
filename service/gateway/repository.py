"""What the Open Inference Protocol says about the gateway's models, whichever transport asks:
server metadata, each endpoint's metadata and Triton-style config, the repository index. An OIP
model is a gateway endpoint; its versions are its variants' model versions.

Callers see the variants that take traffic; dark ones (weight 0, shadows) only with the admin
token, as on ``/endpoints``. The REST routes (service/gateway/http/oip.py) answer these as JSON,
the gRPC service (service/gateway/grpc/service.py) as protobuf messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from service.errors import NotFound
from service.gateway.process import Gateway
from service.tensors import TensorSpec
from traffic.table import EndpointTable, UnknownVariant, VariantSpec

try:
    SERVER_VERSION = version("onnx-gateway")
except PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "0+unknown"
SERVER_METADATA = {
    "name": "onnx-gateway",
    "version": SERVER_VERSION,
    "extensions": ["binary_tensor_data", "model_repository"],
}
PLATFORM = "onnxruntime_onnx"
TRITON_TYPES = {"BYTES": "TYPE_STRING"}


def visible(gateway: Gateway, headers: Mapping[str, str], variants) -> list[VariantSpec]:
    """The variants a caller may see: dark ones only with the admin token."""
    admin = gateway.is_admin(headers)
    return [v for v in variants if v.serving or admin]


def described(
    gateway: Gateway, headers: Mapping[str, str], model: str, model_version: str | None
) -> tuple[EndpointTable, list[VariantSpec]]:
    """The endpoint ``model`` and the variants it describes: the one serving ``model_version``
    (404 if none, or if it is dark and the caller is not an admin), else the visible ones, the
    first stable one first."""
    table = gateway.dataplane.table(model)
    if model_version:
        try:
            variants = visible(gateway, headers, [table.by_version(model_version)])
        except UnknownVariant as error:
            raise NotFound(str(error)) from None
        if not variants:
            raise NotFound(f"endpoint {table.endpoint!r} has no model version {model_version!r}")
        return table, variants
    ordered = sorted(visible(gateway, headers, table.variants), key=lambda v: v.role != "stable")
    return table, ordered


def _tensor_metadata(spec: TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(
    gateway: Gateway, headers: Mapping[str, str], model: str, model_version: str | None
) -> dict:
    table, variants = described(gateway, headers, model, model_version)
    card = gateway.dataplane.model(variants[0]).card
    return {
        "name": table.endpoint,
        "versions": [v.model_version for v in variants],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(s) for s in card.inputs],
        "outputs": [_tensor_metadata(s) for s in card.outputs],
    }


def _triton_tensor(spec: TensorSpec, batched: bool) -> dict:
    dims = list(spec.shape[1:] if batched else spec.shape) or [1]
    data_type = TRITON_TYPES.get(spec.datatype, f"TYPE_{spec.datatype}")
    return {"name": spec.name, "data_type": data_type, "dims": dims}


def model_config(
    gateway: Gateway, headers: Mapping[str, str], model: str, model_version: str | None
) -> dict:
    """A Triton-style model config (perf_analyzer and tritonclient read it)."""
    table, variants = described(gateway, headers, model, model_version)
    card = gateway.dataplane.model(variants[0]).card
    batched = all(s.batched for s in card.inputs + card.outputs)
    return {
        "name": table.endpoint,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": gateway.config.limits.max_rows if batched else 0,
        "input": [_triton_tensor(s, batched) for s in card.inputs],
        "output": [_triton_tensor(s, batched) for s in card.outputs],
    }


def repository_index(gateway: Gateway, headers: Mapping[str, str]) -> list[dict]:
    return [
        {"name": name, "version": variant.model_version, "state": "READY"}
        for name, table in gateway.dataplane.snapshot.tables.items()
        for variant in visible(gateway, headers, table.variants)
    ]
