"""Serving benchmark: the gateway, every feature on, against its peers on the same model.

Run: ``.venv/bin/python bench/serving.py [--seconds 6] [--rounds 3]`` (``make bench``).

Part 1, framework cost, on the demo's logistic regression (cancer:v1, 30 features): requests/s and
p50/p99 for 1-row and 64-row requests at concurrency 1, 8 and 64, with one server process each and
again with two, for

- the gateway: routing, validation, metrics, recording every request with its inputs to a running
  monitor (bench/harness.py ``gateway``), OIP JSON at ``/v2/models/cancer/infer``;
- the bare Starlette + uvicorn + onnxruntime app (bench/peers.py), the same OIP JSON;
- MLServer 1.7.1 with an onnxruntime runtime, in its own virtual environment (one process only:
  MLServer's ``parallel_workers`` is a pool of inference processes behind one HTTP process, not the
  same thing as two servers);
- a plain BentoML ``@bentoml.api`` service (bench/plain_bentoml.py), its own JSON
  (``{"instances": rows}``).

Systems alternate within each round; the tables show the median of the rounds and each system's
requests/s as a share of the bare app's in the same setting. Load comes from closed-loop aiohttp
callers on the same machine (bench/load.py), as the issue's figures were taken.

Part 2, batching, on a wide MLP (service/demo/wide_model.py) where inference is a real cost: rows/s
for 1-row requests at concurrency 64, the gateway with its batcher on and off, and BentoML's
adaptive batching. Results go to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.harness import HOME, gateway, register_demo_models, write_results  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.peers import bare_app, mlserver, plain_bentoml  # noqa: E402
from service import registry  # noqa: E402
from service.demo.wide_model import build_wide_model  # noqa: E402
from service.model_card import MODEL_FILE  # noqa: E402

ROWS = (1, 64)
CONCURRENCY = (1, 8, 64)
OIP_PATH = "/v2/models/{model}/infer"


def oip_body(rows: np.ndarray) -> bytes:
    tensor = {"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def plain_body(rows: np.ndarray) -> bytes:
    return json.dumps({"instances": rows.tolist()}).encode()


def systems(model: Path, workers: int) -> dict:
    """name -> (start(), path, body(rows)) for every system at this worker count."""
    oip = OIP_PATH.format(model="cancer")
    found = {
        "gateway": (lambda: gateway(server={"workers": workers}), oip, oip_body),
        "bare app": (lambda: bare_app(model, workers), oip, oip_body),
        "plain BentoML": (lambda: plain_bentoml(model, workers), "/predict", plain_body),
    }
    if workers == 1:
        found["MLServer"] = (lambda: mlserver(model), oip, oip_body)
    return found


def part_framework(features: np.ndarray, seconds: float, rounds: int) -> list[dict]:
    model = registry.model_dir("cancer:v1") / MODEL_FILE
    runs: dict[tuple, list[dict]] = {}
    for round_ in range(rounds):
        for workers in (1, 2):
            for name, (start, path, body_of) in systems(model, workers).items():
                with start() as url:
                    for rows in ROWS:
                        body = body_of(features[:rows])
                        for concurrency in CONCURRENCY:
                            run = closed_loop(url + path, body, concurrency, seconds)
                            runs.setdefault((workers, rows, concurrency, name), []).append(run)
                            print(
                                f"round {round_ + 1} workers={workers} {name} rows={rows} "
                                f"c={concurrency}: {run['goodput']:,.0f}/s "
                                f"p99 {run['ok_p99_ms']:.1f} ms {run['answers']}",
                                flush=True,
                            )
    table = []
    for (workers, rows, concurrency, name), found in runs.items():
        table.append(
            {
                "system": name,
                "workers": workers,
                "rows": rows,
                "concurrency": concurrency,
                "rps": statistics.median(r["goodput"] for r in found),
                "p50_ms": statistics.median(r["ok_p50_ms"] for r in found),
                "p99_ms": statistics.median(r["ok_p99_ms"] for r in found),
                "not_200": max(sum(v for k, v in r["answers"].items() if k != 200) for r in found),
                "runs": found,
            }
        )
    _print_table(table)
    return table


def _print_table(table: list[dict]) -> None:
    bare = {
        (r["workers"], r["rows"], r["concurrency"]): r for r in table if r["system"] == "bare app"
    }
    print("\n| workers | rows | concurrency | system | req/s | vs bare app | p50 ms | p99 ms |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for row in sorted(table, key=lambda r: (r["workers"], r["rows"], r["concurrency"])):
        base = bare[(row["workers"], row["rows"], row["concurrency"])]
        print(
            f"| {row['workers']} | {row['rows']} | {row['concurrency']} | {row['system']} | "
            f"{row['rps']:,.0f} | {row['rps'] / base['rps']:.2f}x | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} |" + (f" ({row['not_200']} not 200)" if row["not_200"] else "")
        )


def part_batching(features: np.ndarray, seconds: float) -> list[dict]:
    model = build_wide_model(HOME / "wide.onnx", width=2048, layers=4)
    reference = HOME / "wide-reference.csv"
    pd.DataFrame(features, columns=[f"f{i}" for i in range(30)]).assign(label=0.0).to_csv(
        reference, index=False
    )
    registry.add_model(model, "wide", reference, version="v1")
    wide = {"wide": {"variants": [{"name": "stable", "model": "wide:v1"}]}}
    body = oip_body(features[:1])
    path = OIP_PATH.format(model="wide")
    results = []
    setups = {
        "gateway batching on": {"enabled": True, "max_batch_size": 64},
        "gateway batching off, 1 run in flight": {"enabled": False, "concurrency": 1},
        "gateway batching off, 2 runs in flight": {"enabled": False, "concurrency": 2},
    }
    for name, batching in setups.items():
        with gateway(endpoints=wide, batching=batching) as url:
            run = closed_loop(url + path, body, 64, seconds)
            results.append({"system": name, **run})
            print(f"{name}: {run['goodput']:,.0f} rows/s p99 {run['ok_p99_ms']:.0f} ms", flush=True)
    with plain_bentoml(model, adaptive=True) as url:
        run = closed_loop(url + "/predict", plain_body(features[:1]), 64, seconds)
        results.append({"system": "BentoML adaptive batching", **run})
        print(f"BentoML adaptive batching: {run['goodput']:,.0f} rows/s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="each measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=["all", "framework", "batching"], default="all")
    args = parser.parse_args()
    features = register_demo_models()
    results: dict = {}
    if args.part in ("all", "framework"):
        results["framework"] = part_framework(features, args.seconds, args.rounds)
    if args.part in ("all", "batching"):
        results["batching"] = part_batching(features, args.seconds)
    write_results("serving", results)


if __name__ == "__main__":
    main()
