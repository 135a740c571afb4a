"""The peers the gateway is measured against, started the way their users start them:

- a bare Starlette app on uvicorn (uvloop, httptools, one worker): parse the OIP JSON body, run
  ``InferenceSession.run``, write the OIP JSON answer; nothing else (no routing, validation,
  metrics or recording): the floor of what a Python server can do with this model;
- MLServer 1.7.1 with a 15-line onnxruntime runtime, in a virtual environment of its own that the
  benchmark creates on first use (``bench/.mlserver-venv``), so the project's dependencies stay
  clean;
- a plain BentoML ``@bentoml.api`` service on the same ONNX file (bench/plain_bentoml.py): JSON rows
  in, outputs out, what a hand-rolled BentoML service does;
- a no-op server: a bare uvloop protocol that answers every request with the same bytes (an OIP
  answer with the gateway's headers) and does nothing else, so what a run reaches against it is
  the client's own ceiling on this machine.

Each is a context manager that yields the base URL of a server ready on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from service.launch import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
MLSERVER_VENV = ROOT / "bench" / ".mlserver-venv"
MLSERVER_VERSION = "1.7.1"

BARE_APP = """
import os, msgspec, numpy as np, onnxruntime as ort
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

session = ort.InferenceSession(os.environ["BARE_MODEL"], providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]

async def infer(request):
    body = msgspec.json.decode(await request.body())
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    outputs = session.run(None, {tensor["name"]: x})
    answer = {"model_name": request.path_params["model"], "outputs": [
        {"name": n, "datatype": {"f": "FP32", "i": "INT64"}.get(o.dtype.kind, "BYTES"),
         "shape": list(o.shape), "data": o.reshape(-1).tolist()}
        for n, o in zip(names, outputs)]}
    return Response(msgspec.json.encode(answer), media_type="application/json")

async def ready(request):
    return Response(b"{}", media_type="application/json")

app = Starlette(routes=[HttpRoute("/v2/models/{model}/infer", infer, methods=["POST"]),
                        HttpRoute("/v2/health/ready", ready)])
"""

NULL_SERVER = """
import asyncio, os, uvloop

ID = b"cancer:0123456789abcdef0123456789abcdef"
BODY = (b'{"model_name":"cancer","model_version":"v1","parameters":{"request_id":"' + ID + b'"},'
        b'"outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["benign"]},'
        b'{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[1.0,0.0]}]}')
HEADS = [b"HTTP/1.1 200 OK", b"date: Mon, 07 Dec 2026 00:00:00 GMT",
         b"x-gateway-request-id: " + ID, b"x-request-id: " + ID, b"x-gateway-variant: stable",
         b"x-gateway-model-version: v1", b"x-gateway-worker: 1",
         b"content-length: %d" % len(BODY), b"content-type: application/json"]
ANSWER = b"\\r\\n".join(HEADS) + b"\\r\\n\\r\\n" + BODY

class Answering(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.unread = transport, b""

    def data_received(self, data):
        self.unread += data
        while (end := self.unread.find(b"\\r\\n\\r\\n")) >= 0:
            length = 0
            for line in self.unread[:end].split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(self.unread) < end + 4 + length:
                return
            self.unread = self.unread[end + 4 + length:]
            self.transport.write(ANSWER)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answering, "127.0.0.1", int(os.environ["PORT"]), backlog=4096)
    await server.serve_forever()

uvloop.run(main())
"""

MLSERVER_RUNTIME = """
import numpy as np, onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        outputs = self.session.run(None, {payload.inputs[0].name: x})
        names = [o.name for o in self.session.get_outputs()]
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(n, o) for n, o in zip(names, outputs)])
"""


def _wait(
    url: str, process: subprocess.Popen, timeout_s: float = 120, probe: str = "/v2/health/ready"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout_s:.0f} s")


@contextlib.contextmanager
def _serving(
    command: list[str],
    env: dict,
    cwd: Path | None = None,
    port: int | None = None,
    probe: str = "/v2/health/ready",
) -> Iterator[str]:
    port = port or free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    process = subprocess.Popen(
        command,
        env={**env, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process, probe=probe)
        yield url
    finally:
        stop(process)


@contextlib.contextmanager
def bare_app(model: Path, workers: int = 1) -> Iterator[str]:
    """The bare Starlette + uvicorn + onnxruntime app serving ``model`` at any OIP model name."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "bare.py").write_text(BARE_APP)
        command = [
            sys.executable, "-m", "uvicorn", "bare:app", "--port", "{port}", "--host",
            "127.0.0.1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--workers", str(workers),
        ]  # fmt: skip
        with _serving(command, {"BARE_MODEL": str(model)}, cwd=Path(directory)) as url:
            yield url


@contextlib.contextmanager
def null_server() -> Iterator[str]:
    """The no-op server: every request answered at once with the same bytes."""
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "null.py").write_text(NULL_SERVER)
        command = [sys.executable, "null.py"]
        with _serving(command, {"PORT": str(port)}, cwd=Path(directory), port=port) as url:
            yield url


def mlserver_python() -> Path:
    """MLServer's own virtual environment, created (once) with pip from PyPI."""
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet",
             f"mlserver=={MLSERVER_VERSION}", "onnxruntime", "numpy<2.3"],
            check=True,
        )  # fmt: skip
        (MLSERVER_VENV / ".installed").touch()
    return python


@contextlib.contextmanager
def mlserver(model: Path, name: str = "cancer") -> Iterator[str]:
    """MLServer with one worker and an onnxruntime runtime serving ``model`` as ``name``."""
    python = mlserver_python()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "runtime.py").write_text(MLSERVER_RUNTIME)
        port = free_port()
        settings = {
            "http_port": port,
            "grpc_port": free_port(),
            "parallel_workers": 0,
            "metrics_endpoint": None,
        }
        (root / "settings.json").write_text(json.dumps(settings))
        (root / name).mkdir()
        (root / name / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "runtime.OnnxRuntime",
                    "parameters": {"uri": str(model)},
                }
            )
        )
        command = [str(python.parent / "mlserver"), "start", str(root)]
        with _serving(command, {"PYTHONPATH": str(root)}, cwd=root, port=port) as url:
            yield url


@contextlib.contextmanager
def plain_bentoml(model: Path, workers: int = 1, adaptive: bool = False) -> Iterator[str]:
    """bench/plain_bentoml.py serving ``model`` at ``POST /predict`` (``{"instances": rows}``);
    ``adaptive``: with BentoML's adaptive batching."""
    env = {
        "BENCH_MODEL": str(model),
        "BENCH_WORKERS": str(workers),
        "BENCH_ADAPTIVE": "1" if adaptive else "0",
        "BENTOML_HOME": os.environ.get("BENTOML_HOME", ""),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    command = [
        sys.executable, "-m", "bentoml", "serve", "bench.plain_bentoml:Plain", "--port", "{port}",
        "--host", "127.0.0.1",
    ]  # fmt: skip
    with _serving(command, env, cwd=ROOT, probe="/readyz") as url:
        yield url
