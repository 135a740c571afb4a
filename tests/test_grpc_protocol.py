"""The gateway's own inference.proto is the Open Inference Protocol on the wire: every message,
field and method it declares has the same name, number and type in tritonclient's descriptors
(generated from Triton's protos), so any client built on those talks to the gateway unchanged;
and the committed Python modules are what the proto generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pool
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: F401 - fill the pool

from service.gateway.grpc import inference_pb2

ROOT = Path(__file__).resolve().parents[1]
THEIRS = descriptor_pool.Default()


def _messages(descriptor):
    yield descriptor
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            yield from _messages(nested)


def test_every_field_has_the_protocols_number_and_type():
    compared = 0
    for top in inference_pb2.DESCRIPTOR.message_types_by_name.values():
        for ours in _messages(top):
            theirs = THEIRS.FindMessageTypeByName(ours.full_name)
            for field in ours.fields:
                other = theirs.fields_by_name.get(field.name)
                assert other is not None, f"{ours.full_name}.{field.name} is not in the protocol"
                assert (field.number, field.type) == (other.number, other.type), field.full_name
                assert field.is_repeated == other.is_repeated, field.full_name
                if field.message_type is not None:
                    assert field.message_type.full_name == other.message_type.full_name
                if field.enum_type is not None:
                    assert field.enum_type.full_name == other.enum_type.full_name
                compared += 1
    assert compared >= 60


def test_every_method_is_the_protocols():
    ours = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = THEIRS.FindServiceByName("inference.GRPCInferenceService")
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
    enum = inference_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    other = THEIRS.FindEnumTypeByName("inference.DataType")
    assert {v.name: v.number for v in enum.values}.items() <= {
        v.name: v.number for v in other.values
    }.items()


def test_the_committed_modules_are_what_the_proto_generates(tmp_path):
    generated = subprocess.run(
        [sys.executable, str(ROOT / "service" / "gateway" / "grpc" / "generate.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stderr
    for name in ("inference_pb2.py", "inference_pb2_grpc.py"):
        fresh = (tmp_path / "service" / "gateway" / "grpc" / name).read_text()
        assert fresh == (ROOT / "service" / "gateway" / "grpc" / name).read_text(), name
