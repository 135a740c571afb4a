"""Serving benchmark: the gateway against a plain BentoML service and in-process onnxruntime.

Run: ``.venv/bin/python bench/serving.py`` (``make bench``); needs ``wrk`` (Debian package).

Part 1, framework cost, on the demo's logistic regression (cancer:v1, 30 features): requests/s and
p50/p99 for 1-row and 64-row requests at concurrency 1, 8 and 64, for (a) the gateway's plain API,
(b) a plain BentoML ``@bentoml.api`` service on the same ONNX file (bench/plain_bentoml.py), (c)
onnxruntime called in-process. Each server runs one worker.

Part 2, batching, on a wide MLP (service/demo/wide_model.py) where inference is a real cost: rows/s
for 1-row requests at concurrency 64, gateway with its batcher on and off, and BentoML's adaptive
batching.

The load generator is wrk (C, one thread, epoll); its CPU use is measured and printed beside each
figure, so a saturated client would show. Results go to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    HOME,
    ROOT,
    body_for,
    gateway_config,
    in_process,
    register_demo_models,
    write_results,
    wrk,
)
from service import registry  # noqa: E402
from service.demo.wide_model import build_wide_model  # noqa: E402
from service.launch import free_port, running_server, stop, wait_ready  # noqa: E402


@contextmanager
def plain_bentoml(model: Path, adaptive: bool = False):
    port = free_port()
    env = {**os.environ, "BENCH_MODEL": str(model), "BENCH_ADAPTIVE": "1" if adaptive else "0"}
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml_cli), "serve", "bench.plain_bentoml:Plain", "--port", str(port)]
    log = open(HOME / f"plain-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


def part_framework(features: np.ndarray, seconds: float) -> list[dict]:
    model = registry.model_dir("cancer:v1") / "model.onnx"
    results = []
    config = gateway_config(HOME / "gw.yaml", "cancer", "cancer:v1", {"enabled": True})
    systems = {
        "gateway": lambda: running_server(config, log_path=HOME / "gateway.log"),
        "plain-bentoml": lambda: plain_bentoml(model),
    }
    for system, start in systems.items():
        with start() as url:
            path = "/predict/cancer" if system == "gateway" else "/predict"
            for rows in (1, 64):
                body = body_for(features[:rows])
                wrk(url + path, body, 8, 2)  # warm-up
                for connections in (1, 8, 64):
                    result = wrk(url + path, body, connections, seconds)
                    results.append(
                        {"system": system, "rows": rows, "concurrency": connections, **result}
                    )
                    print(json.dumps(results[-1]), flush=True)
    for rows in (1, 64):
        result = in_process(model, features[:rows], seconds)
        results.append(
            {"system": "onnxruntime-in-process", "rows": rows, "concurrency": 1, **result}
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def part_batching(features: np.ndarray, seconds: float) -> list[dict]:
    model = build_wide_model(HOME / "wide.onnx", width=2048, layers=4)
    reference = HOME / "wide-reference.csv"
    pd.DataFrame(features, columns=[f"f{i}" for i in range(30)]).assign(label=0.0).to_csv(
        reference, index=False
    )
    registry.add_model(model, "wide", reference, version="v1")
    body = body_for(features[:1])
    results = []
    setups = {
        "gateway batching on": {"enabled": True, "max_batch_size": 64},
        "gateway batching off, 1 run in flight": {"enabled": False, "concurrency": 1},
        "gateway batching off, 2 runs in flight": {"enabled": False, "concurrency": 2},
    }
    for name, batching in setups.items():
        config = gateway_config(HOME / "wide.yaml", "wide", "wide:v1", batching)
        with running_server(config, log_path=HOME / "gateway-wide.log") as url:
            wrk(url + "/predict/wide", body, 64, 2)
            result = wrk(url + "/predict/wide", body, 64, seconds)
            results.append({"system": name, "rows": 1, "concurrency": 64, **result})
            print(json.dumps(results[-1]), flush=True)
    with plain_bentoml(model, adaptive=True) as url:
        wrk(url + "/predict", body, 64, 2)
        result = wrk(url + "/predict", body, 64, seconds)
        results.append(
            {"system": "bentoml adaptive batching", "rows": 1, "concurrency": 64, **result}
        )
        print(json.dumps(results[-1]), flush=True)
    single = in_process(model, features[:1].astype(np.float32), seconds)
    batch = in_process(model, features[:64].astype(np.float32), seconds)
    results.append({"system": "wide in-process 1 row", "rows": 1, "concurrency": 1, **single})
    results.append({"system": "wide in-process 64 rows", "rows": 64, "concurrency": 1, **batch})
    for result in results[-2:]:
        print(json.dumps(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="duration of each measured run")
    parser.add_argument("--part", choices=["all", "framework", "batching"], default="all")
    args = parser.parse_args()
    features = register_demo_models()
    results = []
    if args.part in ("all", "framework"):
        results += part_framework(features, args.seconds)
    if args.part in ("all", "batching"):
        results += part_batching(features, args.seconds)
    write_results("serving", results)


if __name__ == "__main__":
    main()
