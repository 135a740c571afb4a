"""What the benchmarks share: a throwaway model store, wrk runs, in-process timing, configs.

Importing this module points BentoML at a fresh temporary home, so do it before anything else
imports BentoML.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
atexit.register(shutil.rmtree, HOME, ignore_errors=True)  # a kept /tmp fills up otherwise
os.environ["BENTOML_HOME"] = str(HOME / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from service import registry  # noqa: E402
from service.demo.models import build_demo_models  # noqa: E402
from service.launch import (  # noqa: E402
    MONITOR_SERVICE,  # noqa: E402
    free_port,
    running_server,
)

RESULTS = ROOT / "bench" / "results"
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(
    url: str,
    body: bytes,
    connections: int,
    seconds: float,
    key_header: str | None = None,
    timeout_s: int = 2,
) -> dict:
    """One wrk run posting ``body``; requests/s, p50/p99 (s), non-2xx count and wrk's CPU share.

    With ``key_header``, every request carries a random routing key in that header. An answer
    slower than ``timeout_s`` (wrk's default, 2 s) counts as a timeout among ``socket_errors``: a
    run past the gateway's admission needs more, since it holds refusals up to 4 s.
    """
    script = HOME / "post.lua"
    body_file = HOME / "body.json"
    body_file.write_bytes(body)
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        + (
            "request = function()\n"
            f'  wrk.headers["{key_header}"] = "user-" .. math.random(1, 100000000)\n'
            "  return wrk.format()\nend\n"
            if key_header
            else ""
        )
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        f"--timeout={timeout_s}s",
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


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """The CPU time (user and system) the processes have taken so far, together."""
    return sum(times.user + times.system for times in (p.cpu_times() for p in processes))


def worker_roles(processes: Iterable[psutil.Process]) -> dict[str, psutil.Process]:
    """The BentoML worker processes among ``processes`` by role: "gateway" and "monitor"."""
    found = {}
    for process in processes:
        command = " ".join(process.cmdline())
        if "_bentoml_impl.worker" in command:
            found["monitor" if "MonitorService" in command else "gateway"] = process
    return found


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


def gateway_config(
    path: Path, endpoint: str, tag: str, batching: dict, endpoints: dict | None = None
) -> Path:
    """A config serving ``tag`` alone at ``endpoint`` (or the given ``endpoints``)."""
    config = {
        "model_store": str(HOME / "bentoml"),
        "data_dir": str(path.with_suffix(".data")),
        "batching": batching,
        "limits": {"max_rows": 4096},
        "endpoints": endpoints or {endpoint: {"variants": [{"name": "stable", "model": tag}]}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def body_for(rows: np.ndarray) -> bytes:
    return json.dumps({"instances": rows.tolist()}).encode()


def register_demo_models() -> np.ndarray:
    """Build and register the demo models; return 64 rows of the cancer test features."""
    built = build_demo_models(HOME / "models")
    for model in built:
        registry.add_model(model.onnx_path, model.name, model.reference_path, version=model.version)
    features = pd.read_csv(built[0].test_path).drop(columns=["label"]).to_numpy(np.float32)
    return np.resize(features, (64, features.shape[1]))


def write_results(name: str, results: list[dict] | dict) -> Path:
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {out}")
    return out


def _gateway_config(directory: Path, monitor: dict | None = None, **sections) -> Path:
    """``monitor``: settings added to the monitor's section (its URL and port are the harness's)."""
    port = free_port()
    config = {
        "model_store": str(HOME / "bentoml"),
        "data_dir": str(directory / "data"),
        "monitor": {"url": f"http://127.0.0.1:{port}", "port": port, **(monitor or {})},
        "endpoints": {"cancer": {"variants": [{"name": "stable", "model": "cancer:v1"}]}},
        **sections,
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def gateway(**sections):
    """A gateway serving cancer:v1 and its monitor, every feature on (routing, validation,
    metrics, recording every request with its inputs); ``sections`` override the config's, but
    ``monitor`` adds to the monitor's section. Yields the gateway's URL."""
    with tempfile.TemporaryDirectory() as directory:
        config = _gateway_config(Path(directory), **sections)
        monitor_port = yaml.safe_load(config.read_text())["monitor"]["port"]
        with (
            running_server(config, port=monitor_port, service=MONITOR_SERVICE),
            running_server(config) as url,
        ):
            yield url
