"""GPU benchmark: the gateway serving a model on CUDA against onnxruntime-gpu called directly.

Run on a machine with an NVIDIA GPU:
``.venv/bin/python bench/gpu.py [--seconds 5] [--workers 1] [--callers 8]``. Without a usable CUDA
provider it says so and exits with status 2, having measured nothing.

The model is a wide MLP (service/demo/wide_model.py, 30 features, 4096 wide, 6 layers: about 100
MFLOP a row), big enough that the GPU matters. For batches of 1, 8, 64 and 256 rows it measures

- raw onnxruntime with the CUDA provider, one thread calling ``run`` with numpy in and out (what a
  server that hands numpy to onnxruntime does at best);
- the same with I/O binding: the input copied to the GPU once and outputs left there (the floor
  under any server, which must copy each request's rows in and its answers out);
- the gateway (``device: cuda``, batching on, recording off so the monitor does not share the
  machine's CPU with the measurement) answering OIP requests of that many rows from closed-loop
  callers (bench/load.py), in both of the protocol's encodings: JSON (every number parsed from
  text, about 50 ns a number: 64 rows of 30 features cost about 100 us of decoding alone) and the
  binary tensor extension (a JSON header, then the rows' raw bytes; answers come back the same
  way), which tritonclient uses by default and which a client moving batches to a GPU should use.

Target (issue 13): the gateway at batch 64 serves at least 80% of raw onnxruntime-CUDA's rows/s.
Results go to bench/results/gpu-<workers>-workers-<callers>-callers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from bench.harness import HOME, write_results  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from service import registry  # noqa: E402
from service.demo.wide_model import build_wide_model  # noqa: E402
from service.launch import running_server  # noqa: E402
from service.runtime import CPU, CUDA, cuda_works  # noqa: E402

BATCHES = (1, 8, 64, 256)
FEATURES, WIDTH, LAYERS = 30, 4096, 6
CALLERS = 8


def session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=[CUDA, CPU])


def rows_per_s(run, rows: int, seconds: float) -> dict:
    """Call ``run`` back to back for ``seconds`` (after a warm-up); rows/s and latencies."""
    for _ in range(10):
        run()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return {
        "rows_per_s": rows * len(times) / sum(times),
        "p50_ms": float(np.percentile(times, 50) * 1000),
        "p99_ms": float(np.percentile(times, 99) * 1000),
    }


def raw(model: Path, x: np.ndarray, seconds: float) -> dict:
    cuda = session(model)
    return rows_per_s(lambda: cuda.run(None, {"X": x}), len(x), seconds)


def raw_io_binding(model: Path, x: np.ndarray, seconds: float) -> dict:
    cuda = session(model)
    binding = cuda.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output("variable", "cuda")
    return rows_per_s(lambda: cuda.run_with_iobinding(binding), len(x), seconds)


@contextlib.contextmanager
def gateway_on_cuda(directory: Path, workers: int):
    config = {
        "server": {"workers": workers},
        "model_store": str(HOME / "bentoml"),
        "data_dir": str(directory / "data"),
        "device": "cuda",
        "batching": {"enabled": True, "max_batch_size": 256},
        "limits": {"max_rows": 4096},
        "endpoints": {"wide": {"variants": [{"name": "stable", "model": "wide:v1"}]}},
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with running_server(path, log_path=directory / "gateway.log") as url:
        yield url


def json_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP JSON request for the rows ``x``, and its headers."""
    tensor = {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), {}


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The same rows with the binary tensor extension: the JSON header, then the raw float32 bytes;
    the answer's outputs asked for in binary too."""
    tensor = {
        "name": "X",
        "datatype": "FP32",
        "shape": list(x.shape),
        "parameters": {"binary_data_size": x.nbytes},
    }
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + x.tobytes(), headers


ENCODINGS = {"json": json_request, "binary": binary_request}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="the gateway's worker processes")
    parser.add_argument("--callers", type=int, default=CALLERS, help="closed-loop connections")
    args = parser.parse_args()
    probe = build_wide_model(HOME / "probe.onnx", FEATURES, width=8, layers=1)
    if not cuda_works(probe):
        print(
            "no usable CUDA here (no NVIDIA driver or GPU, or onnxruntime-gpu cannot load its CUDA "
            "libraries): nothing measured. Run this on a machine with an NVIDIA GPU.",
            file=sys.stderr,
        )
        return 2
    model = build_wide_model(HOME / "wide-gpu.onnx", FEATURES, WIDTH, LAYERS)
    rng = np.random.default_rng(0)
    reference = HOME / "wide-gpu-reference.csv"
    features = rng.standard_normal((256, FEATURES)).astype(np.float32)
    pd.DataFrame(features, columns=[f"f{i}" for i in range(FEATURES)]).assign(label=0.0).to_csv(
        reference, index=False
    )
    registry.add_model(model, "wide", reference, version="v1")
    results = []
    with (
        tempfile.TemporaryDirectory() as directory,
        gateway_on_cuda(Path(directory), args.workers) as url,
    ):
        infer_url = f"{url}/v2/models/wide/infer"
        for rows in BATCHES:
            x = np.ascontiguousarray(features[:rows])
            found = {
                "rows": rows,
                "raw": raw(model, x, args.seconds),
                "raw_io_binding": raw_io_binding(model, x, args.seconds),
            }
            for encoding, request in ENCODINGS.items():
                body, headers = request(x)
                run = closed_loop(infer_url, body, args.callers, args.seconds, headers=headers)
                rows_per_s = run["goodput"] * rows
                found[encoding] = {
                    "rows_per_s": rows_per_s,
                    "p50_ms": run["ok_p50_ms"],
                    "p99_ms": run["ok_p99_ms"],
                    "answers": run["answers"],
                    "vs_raw": rows_per_s / found["raw"]["rows_per_s"],
                }
            results.append(found)
            print(json.dumps(found), flush=True)
    print(
        f"\n{args.workers} gateway worker(s), {args.callers} callers\n"
        "| rows per request | raw ORT-CUDA rows/s | with I/O binding "
        "| gateway, JSON rows/s | gateway/raw | gateway, binary tensors rows/s | gateway/raw |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for found in results:
        print(
            f"| {found['rows']} | {found['raw']['rows_per_s']:,.0f} | "
            f"{found['raw_io_binding']['rows_per_s']:,.0f} | "
            f"{found['json']['rows_per_s']:,.0f} | {found['json']['vs_raw']:.0%} | "
            f"{found['binary']['rows_per_s']:,.0f} | {found['binary']['vs_raw']:.0%} |"
        )
    at_64 = next(f for f in results if f["rows"] == 64)
    print(
        f"\ngateway at 64 rows: {at_64['binary']['vs_raw']:.0%} of raw onnxruntime-CUDA with binary "
        f"tensors, {at_64['json']['vs_raw']:.0%} with JSON (target: 80% or more)"
    )
    write_results(
        f"gpu-{args.workers}-workers-{args.callers}-callers",
        {
            "device": ort.get_device(),
            "workers": args.workers,
            "callers": args.callers,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
