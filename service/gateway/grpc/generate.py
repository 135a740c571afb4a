"""Generate ``inference_pb2.py`` and ``inference_pb2_grpc.py`` from ``inference.proto`` (run
``make grpc-stubs``; the committed modules must be what this writes, tests/test_grpc_protocol.py
checks). Needs grpcio-tools (the test extras have it).

One change to protoc's output: the messages go into a descriptor pool of their own instead of
protobuf's default pool. They carry the protocol's own names (``inference.ModelInferRequest``, ...),
as do Triton's and KServe's generated modules; in the default pool, a process that loads both (a
test, or an application embedding the gateway beside a tritonclient) would fail with "duplicate
symbol".

Usage: ``python service/gateway/grpc/generate.py [output root]`` (default: the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO = "service/gateway/grpc/inference.proto"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path) -> None:
    from grpc_tools import protoc

    (out / Path(PROTO).parent).mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    )
    if status != 0:
        raise SystemExit(f"protoc failed ({status})")
    messages = out / Path(PROTO).with_name("inference_pb2.py")
    text = messages.read_text()
    if DEFAULT_POOL not in text:
        raise SystemExit("protoc's output changed: no default-pool registration to replace")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
