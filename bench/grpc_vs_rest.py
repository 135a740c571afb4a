"""gRPC against REST on the same gateway: requests/s and latency of the Open Inference Protocol's
infer over gRPC (raw tensors, one channel: from a prebuilt message on the generated stub, and
through tritonclient.grpc.aio's ``infer``) and over HTTP (OIP JSON, aiohttp, as bench/serving.py
sends it), 1 and 64 rows per request, 64 callers (``--callers``) in a closed loop on the same
machine.

Run: ``.venv/bin/python bench/grpc_vs_rest.py [--seconds 6] [--rounds 3] [--callers 64]``. One
gateway (one worker, every feature on: routing, validation, metrics, recording to a running
monitor) serves both; the protocols alternate within each round; the table shows the median of the
rounds and every call not answered (``failures``: for REST, 429s included). Results go to
bench/results/grpc_vs_rest.json (grpc_vs_rest_N.json for N callers other than 64).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.harness import gateway, register_demo_models, write_results  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.serving import OIP_PATH, oip_body  # noqa: E402
from service.launch import free_port  # noqa: E402

CALLERS = 64
ROWS = (1, 64)
PROTOCOLS = ("grpc stub", "grpc tritonclient", "rest")
"""gRPC from a prebuilt message on the generated stub, gRPC through tritonclient's infer, REST."""


async def _grpc_closed_loop(
    address: str, rows: np.ndarray, seconds: float, lean: bool, callers: int
) -> dict:
    """``callers`` on one channel. ``lean``: the stub with one prebuilt request message (what the
    server can take); else tritonclient.grpc.aio's ``infer`` (what a Python client pays too)."""
    import grpc
    import tritonclient.grpc.aio as triton_grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    client = triton_grpc.InferenceServerClient(address)
    tensor = triton_grpc.InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    channel = grpc.aio.insecure_channel(address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    message = service_pb2.ModelInferRequest(model_name="cancer")
    message.inputs.add(name="X", datatype="FP32", shape=list(rows.shape))
    message.raw_input_contents.append(rows.astype("<f4").tobytes())

    async def infer() -> None:
        if lean:
            await stub.ModelInfer(message)
        else:
            await client.infer("cancer", [tensor])

    latencies: list[float] = []
    failures = 0
    warm_until = time.monotonic() + 1.0
    stop = warm_until + seconds

    async def caller() -> None:
        nonlocal failures
        while (now := time.monotonic()) < stop:
            try:
                await infer()
            except Exception:
                failures += now >= warm_until
                continue
            if now >= warm_until:
                latencies.append(time.monotonic() - now)

    await asyncio.gather(*(caller() for _ in range(callers)))
    await client.close()
    await channel.close()
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "failures": failures,
    }


def _rest(url: str, rows: np.ndarray, seconds: float, callers: int) -> dict:
    run = closed_loop(url + OIP_PATH.format(model="cancer"), oip_body(rows), callers, seconds)
    return {
        "rps": run["goodput"],
        "p50_ms": run["ok_p50_ms"],
        "p99_ms": run["ok_p99_ms"],
        "failures": sum(n for status, n in run["answers"].items() if status != 200)
        + run["connection_errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=CALLERS)
    args = parser.parse_args()
    features = register_demo_models()
    grpc_port = free_port()
    runs: dict[tuple[str, int], list[dict]] = {}
    with gateway(server={"grpc_port": grpc_port}) as url:
        address = f"127.0.0.1:{grpc_port}"
        for _ in range(args.rounds):
            for rows in ROWS:
                batch = np.ascontiguousarray(features[:rows])
                for protocol in PROTOCOLS:
                    if protocol != "rest":
                        lean = protocol == "grpc stub"
                        run = asyncio.run(
                            _grpc_closed_loop(address, batch, args.seconds, lean, args.callers)
                        )
                    else:
                        run = _rest(url, batch, args.seconds, args.callers)
                    runs.setdefault((protocol, rows), []).append(run)
                    print(protocol, rows, {k: round(v, 1) for k, v in run.items()})
    results = []
    for (protocol, rows), measured in sorted(runs.items()):
        median = {
            key: statistics.median(r[key] for r in measured) for key in ("rps", "p50_ms", "p99_ms")
        }
        failures = sum(r["failures"] for r in measured)
        results.append(
            {
                "protocol": protocol,
                "rows": rows,
                "callers": args.callers,
                **median,
                "failures": failures,
            }
        )
    print(f"\n| rows | protocol | req/s | p50 ms | p99 ms | failures | (c={args.callers})")
    for row in sorted(results, key=lambda r: (r["rows"], r["protocol"])):
        print(
            f"| {row['rows']} | {row['protocol']} | {row['rps']:.0f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['failures']} |"
        )
    name = "grpc_vs_rest" if args.callers == CALLERS else f"grpc_vs_rest_{args.callers}"
    write_results(name, results)


if __name__ == "__main__":
    main()
