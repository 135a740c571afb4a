"""What the tests share: the throwaway model store and the tokens every server they start gets,
config writers, a loopback receiver, a traffic driver, and a gateway built in-process.

Tests import these from here (never from conftest.py or from each other). Importing this module
points BentoML at the throwaway store (``BENTOML_HOME`` is read once, at BentoML's import), so it is
imported before anything that imports BentoML.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil
import yaml
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry
from uvicorn.config import Config
from uvicorn.lifespan.off import LifespanOff
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

STORE_PREFIX = "gateway-tests-"
STORE_ROOT = Path(tempfile.mkdtemp(prefix=f"{STORE_PREFIX}{os.getpid()}-"))
os.environ["BENTOML_HOME"] = str(STORE_ROOT / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
MONITOR_TOKEN = "monitor-token-of-the-test-session"
os.environ["GATEWAY_MONITOR_TOKEN"] = MONITOR_TOKEN  # every server the tests start inherits it
MONITOR_AUTH = {"Authorization": f"Bearer {MONITOR_TOKEN}"}
"""Headers for tests that call a monitor directly (gateways send the token themselves)."""
METRICS_TOKEN = "metrics-token-of-the-test-session"
os.environ["GATEWAY_METRICS_TOKEN"] = METRICS_TOKEN
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
"""Headers for reading /metrics of a gateway or a monitor (as Prometheus does)."""
ADMIN_TOKEN = "admin-token-of-the-test-session"
ADMIN_ENV = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
"""The environment that gives a server this admin token (servers have none unless given)."""
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
os.environ.pop("GATEWAY_ADMIN_TOKEN", None)

from service.config import load_config  # noqa: E402  (after BENTOML_HOME)
from service.gateway.http.app import background_tasks, build_app  # noqa: E402
from service.gateway.http.gate import PredictionGate  # noqa: E402
from service.gateway.process import WORKER, Gateway  # noqa: E402
from service.launch import free_port  # noqa: E402
from service.metric_values import FLUSH_S  # noqa: E402
from service.model_card import ModelCard  # noqa: E402
from service.monitor.priority import autogroups_on  # noqa: E402
from service.tensors import TensorSpec  # noqa: E402

AUTOGROUPS_ON = autogroups_on()
"""Whether Linux shares the CPU between sessions here (service/monitor/priority.py)."""


class Clock:
    """A fake clock for the pure parts that take one: ``now`` moves only when a test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


TWO_FEATURE_CARD = ModelCard(
    name="m",
    version="v1",
    sha256="0" * 64,
    task="classification",
    inputs=(TensorSpec("X", "FP32", (-1, 2)),),
    outputs=(TensorSpec("label", "BYTES", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
    feature_names=("a", "b"),
    label_column="label",
    class_labels=("no", "yes"),
    label_output="label",
    probability_output="probabilities",
)
"""A two-feature classifier's card, for tests of what is checked against a card."""


def write_graph(
    path: Path,
    nodes: list,
    outputs: list,
    initializers=(),
    *,
    features: int = 2,
    rows: int | None = None,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """A hand-made ONNX graph on one input ``X`` of ``[rows, features]`` (rows None: any number),
    for shapes a converter does not write; it may use the ``ai.onnx.ml`` operators."""
    inputs = [helper.make_tensor_value_info("X", input_type, [rows, features])]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


PROBE_NAMES = (
    "cancer",
    "diabetes",
    "stable",
    "candidate",
    "v1",
    "v2",
    "latest",
    "..",
    "%2e%2e",
    "x" * 70,
)
"""Names an attacker tries in paths, headers and fields: real ones, and ones that must not pass."""
ODD_VALUES = (
    None,
    True,
    0,
    -1,
    2**63,
    -(2**70),
    1e308,
    1e-320,
    0.5,
    "",
    "é",
    "a b",
    "NaN",
    [],
    {},
    [[]],
)
"""JSON values of every type, at the edges of what decoding and arithmetic take."""


def changed_at_random(rng: random.Random, value: object) -> object:
    """``value`` with one part changed: a leaf replaced, a field dropped or added, a list grown
    or emptied."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        kind = rng.randrange(4)
        if kind == 0:
            return {k: v for k, v in value.items() if k != key}
        if kind == 1:
            return {**value, rng.choice((*PROBE_NAMES, "extra", key + "x")): rng.choice(ODD_VALUES)}
        return {**value, key: changed_at_random(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.7:
        index = rng.randrange(len(value))
        kind = rng.randrange(4)
        if kind == 0:
            return value * rng.choice((0, 2, 40))
        return [*value[:index], changed_at_random(rng, value[index]), *value[index + 1 :]]
    return rng.choice((*ODD_VALUES, *PROBE_NAMES, rng.random() * 1e3, [value], {"x": value}))


def write_config(path: Path, **overrides) -> Path:
    """A gateway.yaml serving the demo models, with top-level sections overridden."""
    config = {
        "model_store": str(STORE_ROOT / "bentoml"),
        "endpoints": {
            "cancer": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [
                    {"name": "stable", "model": "cancer:v1", "weight": 90},
                    {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
                ],
            },
            "diabetes": {"variants": [{"name": "stable", "model": "diabetes:v1"}]},
        },
    }
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


def local_monitor(port: int, **settings) -> dict:
    """A config's ``monitor`` section for a monitor on 127.0.0.1:``port``, flushing every 50 ms.
    Attribution drift is off unless a test turns it on (``attribution_rows``): it is a SHAP run
    per variant per analysis, which tests about other things need not pay for;
    tests/test_monitor_runs.py and tests/test_dashboard.py test it."""
    return {
        "url": f"http://127.0.0.1:{port}",
        "port": port,
        "flush_interval_ms": 50,
        "attribution_rows": 0,
        **settings,
    }


async def loopback_server(routes: dict[str, Callable]):
    """A small real HTTP server on 127.0.0.1 answering POST to each path of ``routes`` with its
    handler (aiohttp's): stands in for a monitor, a webhook or a gateway in tests. Returns (base
    URL, cleanup coroutine)."""
    from aiohttp import web

    app = web.Application()
    for path, handle in routes.items():
        app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner.cleanup


async def loopback_receiver(path: str, handle):
    """``loopback_server`` answering POST ``path`` alone. Returns (its URL, cleanup coroutine)."""
    base_url, cleanup = await loopback_server({path: handle})
    return f"{base_url}{path}", cleanup


ROW = [14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.08, 0.05, 0.18, 0.06] * 3


def monitor_in_process(tmp_path: Path, monkeypatch, endpoints: dict):
    """A ``Monitor`` (its stores in ``tmp_path``) for gateway.yaml's ``endpoints``, without a
    server, its metrics in a registry of its own."""
    from service.config import parse_config
    from service.monitor import process
    from service.monitor.metrics import MonitorMetrics
    from service.secrets import Secrets

    monkeypatch.setattr(process, "MonitorMetrics", lambda: MonitorMetrics(CollectorRegistry()))
    config = parse_config({"data_dir": str(tmp_path), "endpoints": endpoints})
    return process.Monitor(config, Secrets())


def rollout_config(tmp_path, faults=None, webhook=None, **rollout) -> tuple:
    port = free_port()
    candidate = {"name": "candidate", "model": "cancer:v2", "role": "candidate", "weight": 0}
    if faults:
        candidate["faults"] = faults
    policy = {
        "candidate": "candidate",
        "steps": [{"weight": 20, "min_duration_s": 2}, {"weight": 50, "min_duration_s": 2}],
        "interval_s": 0.5,
        "guard_window_s": 5,
        "revert_window_s": 2,
        "comparisons": [{"metric": "error_rate", "margin": 0.05, "min_samples": 50}],
        "offline_gate": {"margin": 0.05},
        **rollout,
    }
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port),
        notifications={"webhooks": [webhook] if webhook else [], "timeout_s": 2},
        endpoints={
            "cancer": {
                "routing": {"key": {"header": "x-user-id"}},
                "variants": [{"name": "stable", "model": "cancer:v1"}, candidate],
                "rollout": policy,
            }
        },
    )
    return config, port


class Answer(NamedTuple):
    """What one prediction answered, from its status and headers."""

    status: int
    variant: str | None
    worker: str | None
    seconds: float
    request_id: str | None


async def scrape(session, url: str) -> str:
    """A server's ``/metrics`` once every worker has written its latest values (each does every
    ``FLUSH_S``; service/metric_values.py)."""
    await asyncio.sleep(2 * FLUSH_S)
    async with session.get(f"{url}/metrics", headers=METRICS_AUTH) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.text()


def metric_total(text: str, prefix: str, containing: str = "") -> float:
    """The sum of the samples in an exposition whose line starts with ``prefix`` (and holds
    ``containing``, a label anywhere in the series)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and containing in line
    )


async def metric_sum(session, url: str, prefix: str) -> float:
    """The sum over a server's workers of the samples whose line starts with ``prefix``."""
    return metric_total(await scrape(session, url), prefix)


async def predict(session, url, key=None, endpoint="cancer", headers=None) -> Answer:
    """One 1-row prediction, keyed by ``key`` (the ``x-user-id`` header) when given."""
    all_headers = {**({"x-user-id": key} if key else {}), **(headers or {})}
    started = time.perf_counter()
    async with session.post(
        f"{url}/predict/{endpoint}", json={"instances": [ROW]}, headers=all_headers
    ) as answer:
        await answer.read()
        return Answer(
            answer.status,
            answer.headers.get("x-gateway-variant"),
            answer.headers.get("x-gateway-worker"),
            time.perf_counter() - started,
            answer.headers.get("x-gateway-request-id"),
        )


def server_processes(port: int) -> tuple[psutil.Process, list[psutil.Process]]:
    """The server listening on ``port``: its arbiter and its worker processes."""
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "serve" in command and "--port" in command:
            if command[command.index("--port") + 1] == str(port):
                return process, process.children(recursive=True)
    raise AssertionError(f"no server on port {port}")


async def drive(
    session, url, seconds, users=400, concurrency=8, endpoint="cancer", row=ROW
) -> list[tuple]:
    """Keyed requests of ``row`` for ``seconds``: (time, user, status, variant, request id) for
    each."""
    answers, stop = [], time.monotonic() + seconds

    async def user_loop(first: int) -> None:
        user = first
        while time.monotonic() < stop:
            headers = {"x-user-id": f"user-{user % users}"}
            async with session.post(
                f"{url}/predict/{endpoint}", json={"instances": [row]}, headers=headers
            ) as answer:
                variant = answer.headers.get("x-gateway-variant")
                request_id = answer.headers.get("x-gateway-request-id")
                answers.append((time.monotonic(), user % users, answer.status, variant, request_id))
            user += concurrency
            await asyncio.sleep(0.005)

    await asyncio.gather(*(user_loop(i) for i in range(concurrency)))
    return answers


def browse(url: str) -> str:
    """The DOM of ``url`` after a real browser (Debian's chromium, headless) loaded it and ran its
    scripts for up to 10 s. Fails, saying so, where chromium is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise AssertionError("chromium is not installed: apt-get install chromium (make test does)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        shown = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # tests may run as root, where chromium's sandbox cannot start
                "--disable-gpu",
                # nothing beyond loopback: no background fetches, updates, sync or QUIC probes
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert shown.returncode == 0, shown.stderr[-2000:]
    return shown.stdout


@contextlib.asynccontextmanager
async def in_process_gateway(config_path: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """A gateway built in this process from ``config_path`` (the process object and its app,
    behind the prediction gate as BentoML serves them, with its background tasks running) and an
    HTTP client that calls it without a socket. Its metrics live in a registry of their own."""
    gateway = Gateway.start(config_path, load_config(config_path), CollectorRegistry())
    app = build_app()
    app.state.gateway = gateway

    def refused(route: str, reason: str) -> None:
        gateway.metrics.shed.labels(route, reason).inc()

    # BentoML mounts the app at /: every route that is not a prediction goes straight to it
    limits = gateway.config.limits
    gate = PredictionGate(
        app,
        app,
        lambda: gateway.admission,
        refused,
        WORKER,
        lambda: limits,
        lambda: gateway.arriving_bodies,
    )
    transport = httpx.ASGITransport(app=gate)
    try:
        async with background_tasks(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield gateway, client
    finally:
        await gateway.close()


def until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    """Whether ``condition()`` came true within ``timeout_s`` (asked every ``every_s``)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


def receiving(*messages: dict):
    """An ASGI ``receive`` handing out ``messages`` in turn."""
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    return receive


class RecordingTransport:
    """The parts of an asyncio transport uvicorn uses, keeping each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(app) -> tuple[HttpToolsProtocol, RecordingTransport]:
    """A uvicorn HTTP protocol serving ``app`` on a new connection, and its transport."""
    config = Config(app=app, log_config=None, proxy_headers=False, date_header=False)
    protocol = HttpToolsProtocol(config, ServerState(), LifespanOff(config).state)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def answered(protocol: HttpToolsProtocol, request: bytes) -> None:
    """Feed ``request`` to the connection and let the event loop run until it is answered."""
    protocol.data_received(request)
    for _ in range(100):
        await asyncio.sleep(0)
        if protocol.cycle is not None and protocol.cycle.response_complete:
            return
