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
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
os.environ["BENTOML_HOME"] = str(HOME / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from service import registry  # noqa: E402
from service.demo.models import build_demo_models  # noqa: E402
from service.demo.wide_model import build_wide_model  # noqa: E402
from service.launch import free_port, running_gateway, stop, wait_ready  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url: str, body: bytes, connections: int, seconds: float) -> dict:
    """One wrk run posting ``body``; requests/s, p50/p99 (s), non-2xx count and wrk's CPU share."""
    script = HOME / "post.lua"
    body_file = HOME / "body.json"
    body_file.write_bytes(body)
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()\n'
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M).groups()
        return float(value) * UNIT[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "client_cpu": cpu / seconds,
    }


def in_process(model: Path, rows: np.ndarray, seconds: float) -> dict:
    """onnxruntime called in a loop in this process: the floor under any server."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, {name: rows})
        times.append(time.perf_counter() - started)
    return {
        "rps": len(times) / sum(times),
        "p50": float(np.percentile(times, 50)),
        "p99": float(np.percentile(times, 99)),
        "non_2xx": 0,
        "socket_errors": "",
        "client_cpu": 0.0,
    }


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


def gateway_config(path: Path, endpoint: str, tag: str, batching: dict) -> Path:
    config = {
        "model_store": str(HOME / "bentoml"),
        "batching": batching,
        "limits": {"max_rows": 4096},
        "endpoints": {endpoint: {"variants": [{"name": "stable", "model": tag}]}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def body_for(rows: np.ndarray) -> bytes:
    return json.dumps({"instances": rows.tolist()}).encode()


def part_framework(features: np.ndarray, seconds: float) -> list[dict]:
    model = registry.model_dir("cancer:v1") / "model.onnx"
    results = []
    config = gateway_config(HOME / "gw.yaml", "cancer", "cancer:v1", {"enabled": True})
    systems = {
        "gateway": lambda: running_gateway(config, log_path=HOME / "gateway.log"),
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
        with running_gateway(config, log_path=HOME / "gateway-wide.log") as url:
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
    built = build_demo_models(HOME / "models")
    for model in built:
        registry.add_model(model.onnx_path, model.name, model.reference_path, version=model.version)
    features = pd.read_csv(built[0].test_path).drop(columns=["label"]).to_numpy(np.float32)
    features = np.resize(features, (64, features.shape[1]))
    results = []
    if args.part in ("all", "framework"):
        results += part_framework(features, args.seconds)
    if args.part in ("all", "batching"):
        results += part_batching(features, args.seconds)
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "serving.json"
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
