"""An attacker's and a careless client's corpus against a gateway and monitor set up as the demo
is (its endpoints, dark candidates and rollouts; the product's default exposure): every case gets
the 4xx a careful server gives (401, 403, 404, 400, ...), nothing refused is stored, no path is
written outside the data directory, and the servers keep serving, with no server error counted.

Requests go out through ``http.client`` so paths reach the server exactly as written (no client
normalises ``..`` or decodes ``%2e``), as ``curl --path-as-is`` would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest
import yaml
from tritonclient.grpc import service_pb2, service_pb2_grpc

from monitors.store import MonitorStore
from service import registry
from service.config import load_config
from service.demo.run import demo_config
from service.launch import MONITOR_SERVICE, free_port, running_server
from tests.helpers import (
    ADMIN_AUTH,
    ADMIN_ENV,
    METRICS_AUTH,
    MONITOR_AUTH,
    STORE_ROOT,
    metric_total,
    server_processes,
)

pytestmark = pytest.mark.integration
ROW = [14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.08, 0.05, 0.18, 0.06] * 3
DEEP = b"[" * 5000 + b"]" * 5000
SLOW_CLIENT_LIMIT_S = 2.0
"""``server.request_read_timeout_s`` here (30 s by default), so slow clients are closed quickly."""
SHED = "gateway_shed_requests_total"
ARRIVING_LIMIT = 8 * 2**20
"""``limits.max_arriving_body_bytes`` here (256 MiB by default): twice the body limit."""
DECLARED_BODY = 4_000_000
"""A body under the body limit (4 MiB)."""


@pytest.fixture(scope="module")
def demo(demo_models, tmp_path_factory):
    """(gateway address, monitor address, data dir): the demo's config, secrets from the test
    session (admin and monitor tokens), default exposure (``access`` left as the product has it)."""
    directory = tmp_path_factory.mktemp("abuse")
    port = free_port()
    config = demo_config(port)
    config.pop("access")  # the product's defaults, not the demo's anonymous metrics
    config.pop("secrets")  # tokens from the environment
    config["server"]["grpc_port"] = free_port()
    config["server"]["host"] = "127.0.0.2"  # served on 127.0.0.1 (--host): gRPC must be too
    config["server"]["request_read_timeout_s"] = SLOW_CLIENT_LIMIT_S
    config["limits"] = {"max_arriving_body_bytes": ARRIVING_LIMIT}
    config.update(model_store=str(STORE_ROOT / "bentoml"), data_dir=str(directory / "data"))
    v1 = demo_models["cancer:v1"]
    registry.add_model(v1.onnx_path, "cancer", v1.reference_path, version="v3-shadow")
    config["endpoints"]["dark"] = {  # the demo's rollouts start at once: a variant kept dark
        "variants": [
            {"name": "stable", "model": "cancer:v1"},
            {"name": "candidate", "model": "cancer:v2", "role": "candidate", "weight": 0},
            {"name": "mirror", "model": "cancer:v3-shadow", "role": "shadow", "mirror": 0.5},
        ]
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with (
        running_server(path, port=port, service=MONITOR_SERVICE, log_path=directory / "m.log"),
        running_server(path, env=ADMIN_ENV, log_path=directory / "g.log") as url,
    ):
        yield url.removeprefix("http://"), f"127.0.0.1:{port}", load_config(path).data_dir


def send(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    """One request with ``path`` sent byte for byte as given: (status, headers, body)."""
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        headers = {name.lower(): value for name, value in answer.getheaders()}
        return answer.status, headers, answer.read()
    finally:
        connection.close()


def predict(
    address: str, endpoint: str = "cancer", headers: dict | None = None, rows: int = 1
) -> dict:
    row = ROW if endpoint.startswith("cancer") else ROW[:10]
    body = json.dumps({"instances": [row] * rows}).encode()
    status, _, body = send(address, "POST", f"/predict/{endpoint}", body, headers)
    assert status == 200, body
    return json.loads(body)


def config_endpoints(data_dir: Path) -> set[str]:
    return set(load_config(data_dir.parent / "gateway.yaml").endpoints)


def counted(address: str, counter: str, label: str) -> float:
    """The total of the gateway's ``counter`` over its series that carry ``label``."""
    _, _, text = send(address, "GET", "/metrics", headers=METRICS_AUTH)
    return metric_total(text.decode(), counter + "{", label)


def error_count(address: str) -> float:
    return counted(address, "gateway_requests_total", 'outcome="error"')


def sending(address: str, path: bytes, size: int) -> socket.socket:
    """A connection that has sent ``size`` bytes of a ``DECLARED_BODY``-byte body to ``path``
    and stops there, once the server has read them."""
    host, port = address.split(":")
    client = socket.create_connection((host, int(port)), timeout=10)
    client.sendall(
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % DECLARED_BODY + b" " * size
    )
    time.sleep(0.5)  # read by the server
    return client


def test_the_servers_listen_on_their_own_ports_alone_and_their_control_sockets_are_private(demo):
    """BentoML's arbiter took commands, one of which starts any program, on a TCP port of
    127.0.0.1 with no authentication: any local user could run commands as the server's. And
    gRPC listened where the file's ``server.host`` said, not where the server was told to
    (``--host``): on every interface for an operator who served on loopback."""
    gateway, monitor, data_dir = demo
    grpc_port = load_config(data_dir.parent / "gateway.yaml").server.grpc_port
    for address, ports in ((gateway, {grpc_port}), (monitor, set())):
        port = int(address.split(":")[1])
        arbiter, workers = server_processes(port)
        listening = {
            (process.pid, connection.laddr)
            for process in (arbiter, *workers)
            for connection in process.net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN
        }
        assert {laddr.port for _, laddr in listening} == {port, *ports}, listening
        addresses = {laddr.ip.removeprefix("::ffff:") for _, laddr in listening}  # gRPC's: IPv6
        assert addresses == {"127.0.0.1"}, listening
        control = [
            connection.laddr
            for connection in arbiter.net_connections(kind="unix")
            if connection.laddr.endswith("/control")
        ]
        assert len(control) == 1, arbiter.net_connections(kind="unix")
        directory = Path(control[0]).parent
        assert directory.stat().st_uid == os.geteuid()
        assert directory.stat().st_mode & 0o077 == 0, oct(directory.stat().st_mode)


def test_every_monitor_route_needs_the_monitor_token(demo):
    _, monitor, _ = demo
    routes = [
        ("POST", "/rollouts/cancer-canary/rollback"),
        ("POST", "/rollouts/cancer-canary/promote"),
        ("POST", "/rollouts/cancer-canary/start"),
        ("POST", "/runs"),
        ("POST", "/labels"),
        ("POST", "/rewards"),
        ("POST", "/records"),
        ("GET", "/experiments"),
        ("GET", "/experiments/cancer"),
        ("GET", "/summary"),
        ("GET", "/rollouts"),
        ("GET", "/rollouts/cancer-canary"),
        ("GET", "/reports"),
        ("GET", "/metrics"),
    ]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, ADMIN_AUTH):
            status, answer_headers, _ = send(monitor, method, path, b"{}", headers)
            assert status == 401, (method, path, headers)
            assert answer_headers.get("www-authenticate") == "Bearer"
    status, _, body = send(monitor, "GET", "/summary", headers=MONITOR_AUTH)
    assert status == 200 and "variants" in json.loads(body)


def test_report_paths_never_leave_the_report_routes(demo):
    gateway, _, _ = demo
    paths = [
        "/reports/../rollouts/cancer-canary",
        "/reports/%2e%2e/%2e%2e/summary",
        "/reports/%2e%2e/rollouts/cancer-canary",
        "/reports/cancer/stable/..%2F..%2Fgateway.yaml",
        "/reports/cancer/%2e%2e/drift-1.html",
        "/reports/./stable/drift-1.html",
        "/reports/cancer/stable/drift-1.html%00.json",
    ]
    for path in paths:
        for headers in ({}, ADMIN_AUTH):
            status, _, body = send(gateway, "GET", path, headers=headers)
            assert status in (401, 404), (path, status, body[:200])
            assert b"rollout" not in body and b"variants" not in body, path


def test_names_from_posted_records_never_become_paths_or_series(demo):
    gateway, monitor, data_dir = demo
    good = predict(gateway)
    for _ in range(5):  # enough rows for the run below to judge and save reports
        predict(gateway, headers={"x-gateway-variant": "stable"}, rows=50)
    time.sleep(0.5)
    record = {
        "at": time.time(),
        "model": "cancer:v1",
        "predictions": ["benign"],
        "latency_s": 0.001,
        "inputs": [ROW],
    }
    hostile = [
        {"endpoint": "..", "variant": "stable"},
        {"endpoint": "/tmp", "variant": "x"},
        {"endpoint": "cancer", "variant": "../../escaped"},
        {"endpoint": "cancer", "variant": "ghost"},  # no such variant in the routing state
        {"endpoint": "nope", "variant": "stable"},
        {"endpoint": "cancer", "variant": "stable", "model": "../x:v1"},
        {"endpoint": "cancer", "variant": "stable", "outcome": "weird"},
    ]
    records = [
        {"request_id": f"{r['endpoint']}:{'0' * 31}{i}", **record, **r}
        for i, r in enumerate(hostile)
    ]
    body = json.dumps({"records": records}).encode()
    status, _, answer = send(monitor, "POST", "/records", body, MONITOR_AUTH)
    assert status == 200 and json.loads(answer) == {"stored": 0, "refused": len(hostile)}
    status, _, _ = send(monitor, "POST", "/runs?reports=true", b"", MONITOR_AUTH)
    assert status == 200
    reports = data_dir / "reports"
    written = {p.relative_to(reports).parts[:2] for p in reports.glob("*/*/*")}
    assert ("cancer", "stable") in written, written
    assert all(part[0] in config_endpoints(data_dir) for part in written), written
    assert not (data_dir.parent / "escaped").exists() and not Path("/tmp/x").exists()
    store = MonitorStore.open_sqlite(data_dir / "monitor.sqlite3")
    endpoints = load_config(data_dir.parent / "gateway.yaml").endpoints
    served = {(name, v.name) for name, endpoint in endpoints.items() for v in endpoint.variants}
    assert {(r["endpoint"], r["variant"]) for r in store.counts()} <= served
    assert good["request_id"].startswith("cancer:")


def test_records_that_do_not_fit_their_model_are_refused_and_its_analysis_goes_on(demo):
    """A record whose shapes are not an answer of its model would fail every analysis of its
    variant for as long as it is kept."""
    gateway, monitor, _ = demo
    predict(gateway, endpoint="diabetes", rows=50)
    row = ROW[:10]  # diabetes, a regressor, takes ten features
    answered = {"at": time.time(), "model": "diabetes:v1", "latency_s": 0.001}
    misfits = [
        {"inputs": [row, row], "predictions": [151.0]},
        {"inputs": [row[:9]], "predictions": [151.0]},
        {"inputs": [row], "predictions": ["high"]},
        {"inputs": [row], "predictions": [151.0], "shadow": {"stable": [1.0, 2.0]}},
        {"inputs": [row], "predictions": [], "outcome": "error"},
    ]
    fits = {"inputs": [row], "predictions": [151.0]}
    records = [
        {"request_id": f"diabetes:{i:032x}", "endpoint": "diabetes", "variant": "stable"}
        | answered
        | fields
        for i, fields in enumerate([*misfits, fits])
    ]
    body = json.dumps({"records": records}).encode()
    status, _, answer = send(monitor, "POST", "/records", body, MONITOR_AUTH)
    assert status == 200 and json.loads(answer) == {"stored": 1, "refused": len(misfits)}
    status, _, answer = send(monitor, "POST", "/runs", b"", MONITOR_AUTH)
    assert status == 200, answer
    failures = 'endpoint="diabetes"'
    assert counted(monitor, "gateway_monitor_analysis_failures_total", failures) == 0


def test_a_record_stamped_ahead_of_the_monitors_clock_is_stored_as_it_arrived(demo):
    """Stamped a year ahead (a gateway whose clock runs fast), it would stay out of the windows
    read now and in every later one, past its pruning, for a year."""
    _, monitor, data_dir = demo
    ahead = {
        "request_id": "diabetes:" + "a" * 32,
        "at": time.time() + 365 * 86400,
        "endpoint": "diabetes",
        "variant": "stable",
        "model": "diabetes:v1",
        "predictions": [151.0],
        "latency_s": 0.001,
    }
    sent = time.time()
    body = json.dumps({"records": [ahead]}).encode()
    status, _, answer = send(monitor, "POST", "/records", body, MONITOR_AUTH)
    assert status == 200 and json.loads(answer) == {"stored": 1, "refused": 0}
    with contextlib.closing(sqlite3.connect(data_dir / "monitor.sqlite3")) as store:
        (at,) = store.execute(
            "SELECT at FROM predictions WHERE request_id = ?", (ahead["request_id"],)
        ).fetchone()
    assert sent <= at <= time.time()


def test_malformed_input_is_4xx_on_every_route(demo):
    gateway, monitor, _ = demo
    before = error_count(gateway)
    rank70 = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1] * 70, "data": [1.0]}]}
    gzipped = gzip.compress(json.dumps({"instances": [ROW]}).encode())
    half = gzipped[: len(gzipped) // 2]
    cases = [
        ("POST", "/predict/cancer", DEEP, {}),
        ("POST", "/v2/models/cancer/infer", DEEP, {}),
        ("POST", "/feedback", DEEP, {}),
        ("POST", "/v2/models/cancer/infer", json.dumps(rank70).encode(), {}),
        ("POST", "/predict/cancer", gzipped + b"junk", {"Content-Encoding": "gzip"}),
        ("POST", "/predict/cancer", half, {"Content-Encoding": "gzip"}),
        ("POST", "/predict/cancer", b"{}", {"Content-Length": "-1"}),
        ("POST", "/predict/cancer", b"{}", {"x-request-id": "a\tb"}),
        ("POST", "/predict/cancer", b'{"instances": [[1e400]]}', {}),
        ("POST", "/predict/cancer", b'{"instances": [[' + b"9" * 400 + b", 1" * 29 + b"]]}", {}),
        ("GET", "/admin/audit?limit=%C2%B2", None, ADMIN_AUTH),
        ("GET", "/admin/audit?limit=99999999999999999999", None, ADMIN_AUTH),
        ("GET", "/admin/rollouts/cancer-canary?history=%C2%B2", None, ADMIN_AUTH),
        ("GET", "/admin/rollouts/%2e%2e", None, ADMIN_AUTH),
        ("POST", "/admin/rollouts/cancer-canary/%2e%2e", None, ADMIN_AUTH),
        ("PUT", "/admin/endpoints/cancer/weights", DEEP, ADMIN_AUTH),
        ("GET", "/admin/experiments/%2e%2e", None, ADMIN_AUTH),
        ("POST", "/admin/experiments/cancer/%2e%2e", None, ADMIN_AUTH),
        ("POST", "/admin/experiments/diabetes/start", None, ADMIN_AUTH),
        ("POST", "/admin/experiments/cancer/stop", None, ADMIN_AUTH),  # not running
        ("POST", "/feedback", b'{"rewards": [{"request_id": "x", "metric": "converted"}]}', {}),
        ("POST", "/feedback", b'{"rewards": {"request_id": "x"}}', {}),
        ("GET", "/experiments/%2e%2e", None, MONITOR_AUTH),
        ("POST", "/rewards", DEEP, MONITOR_AUTH),
        (
            "POST",
            "/rewards",
            b'{"rewards": [{"request_id": "../x", "metric": "a", "value": 1}]}',
            MONITOR_AUTH,
        ),
        ("GET", "/rollouts/cancer-canary?history=%C2%B2", None, MONITOR_AUTH),
        ("POST", "/runs?reports=%C2%B2", None, MONITOR_AUTH),
        ("POST", "/labels", DEEP, MONITOR_AUTH),
        ("POST", "/records", DEEP, MONITOR_AUTH),
    ]
    for method, path, body, headers in cases:
        address = monitor if headers is MONITOR_AUTH else gateway
        status, _, answer = send(address, method, path, body, headers)
        assert 400 <= status < 500, (path, status, answer[:300])
        if answer.startswith(b"{"):  # ours; a request the HTTP parser refuses gets its text
            assert "error" in json.loads(answer), path
    multi = gzip.compress(b'{"instances": [') + gzip.compress(json.dumps(ROW).encode() + b"]}")
    status, _, answer = send(
        gateway, "POST", "/predict/cancer", multi, {"Content-Encoding": "gzip"}
    )
    assert status == 200, answer  # several gzip members are one valid body
    assert error_count(gateway) == before


def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(demo):
    gateway, _, _ = demo
    before = error_count(gateway)
    host, port = gateway.split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                b"POST /predict/cancer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                + b'{"instances": [[1,'
            )
    time.sleep(0.5)
    assert error_count(gateway) == before
    assert predict(gateway)["predictions"]


def test_slow_clients_are_closed_with_a_408_and_others_still_served(demo):
    """A client that connects and sends nothing, half a request's head or half its body (a
    slowloris) is closed once ``request_read_timeout_s`` has passed, by both servers; a client
    that takes its time between requests is not (that is uvicorn's keep-alive, 5 s)."""
    gateway, monitor, _ = demo
    servers = ((gateway, b"/predict/cancer", METRICS_AUTH), (monitor, b"/labels", MONITOR_AUTH))
    for address, path, auth in servers:
        token = auth["Authorization"].encode()
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n"
        starts = [b"", head, head + b"Content-Length: 100\r\n\r\n" + b'{"labels": [']
        host, port = address.split(":")
        began = time.monotonic()
        clients = [socket.create_connection((host, int(port)), timeout=15) for _ in starts]
        for client, start in zip(clients, starts):
            client.sendall(start)
        patient = http.client.HTTPConnection(address, timeout=15)
        patient.request("GET", "/metrics", headers=auth)
        assert patient.getresponse().read()
        time.sleep(SLOW_CLIENT_LIMIT_S + 1)
        for client, start in zip(clients, starts):
            with client:
                assert client.recv(1000).startswith(b"HTTP/1.1 408"), (address, start)
                assert client.recv(1000) == b"", (address, start)  # and closed
        assert time.monotonic() - began >= SLOW_CLIENT_LIMIT_S
        patient.request("GET", "/metrics", headers=auth)
        assert patient.getresponse().status == 200  # on the same connection, still open
        patient.close()
    assert predict(gateway)["predictions"]
    assert error_count(gateway) == 0


def test_clients_slow_to_send_their_bodies_do_not_lock_others_out(demo):
    """More clients than the worker takes at once (predictions: its admission limit starts at
    64; labels: 32 in flight) each send half a body and stop: the others are still answered, not
    refused, because a call holds no slot while its body is still arriving."""
    gateway, _, _ = demo
    host, port = gateway.split(":")
    slow = [socket.create_connection((host, int(port)), timeout=15) for _ in range(120)]
    for i, client in enumerate(slow):
        path = b"/v2/models/cancer/infer" if i % 3 else b"/feedback"
        client.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 2000\r\n\r\n{"inputs": ['
        )
    time.sleep(0.5)
    try:
        for _ in range(5):
            answer = predict(gateway)
            label = json.dumps({"labels": [{"request_id": answer["request_id"], "label": 1}]})
            status, _, reply = send(gateway, "POST", "/feedback", label.encode())
            assert status == 400 and b"not a class" in reply  # judged, not refused for load
    finally:
        for client in slow:
            client.close()
    assert error_count(gateway) == 0


def test_a_body_declared_over_the_limit_is_refused_before_it_arrives(demo):
    gateway, _, _ = demo
    host, port = gateway.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(
            b"POST /predict/cancer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000000\r\n\r\n{"instances": ['
        )
        assert client.recv(1000).startswith(b"HTTP/1.1 413")


def answer_to(address: str, data: bytes, then: bytes = b"", times: int = 0) -> bytes:
    """The head of what the server answers to ``data`` followed by ``then`` sent ``times`` times
    (as long as it reads them)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(data)
        with contextlib.suppress(OSError):  # the server may close before it is all sent
            for _ in range(times):
                client.sendall(then)
        return client.recv(1000)


def test_a_request_head_past_its_bound_is_431_at_once_and_others_are_served(demo):
    """Heads had no bound: a header of 160 MB held the demo's worker's core for 30 s (until the
    slow-client limit) and took it 250 MB; each read copied all that had come."""
    gateway, monitor, _ = demo
    monitor_token = MONITOR_AUTH["Authorization"].encode()
    for address, reading_a_body in (
        (gateway, b"POST /predict/cancer HTTP/1.1\r\n"),
        (monitor, b"POST /labels HTTP/1.1\r\nAuthorization: " + monitor_token + b"\r\n"),
    ):
        growing = [
            b"GET /livez?q=",  # a URL
            b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ",  # a header
            reading_a_body + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: ",
        ]
        for start in growing:
            started = time.monotonic()
            answer = answer_to(address, start, b"a" * 65536, times=64)
            assert answer.startswith(b"HTTP/1.1 431"), (address, start, answer)
            assert b"over 65536 bytes" in answer
            assert time.monotonic() - started < SLOW_CLIENT_LIMIT_S  # not the slow-client 408
    big_header = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Token: " + b"t" * 60_000 + b"\r\n\r\n"
    assert answer_to(gateway, big_header).startswith(b"HTTP/1.1 200")
    body = json.dumps({"instances": [ROW] * 400}).encode()  # 71,000 chunks of one byte
    chunked = b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\n\r\n"
    head = b"POST /predict/cancer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert len(chunked) - len(body) > 5 * 65536  # framing alone
    assert answer_to(gateway, head + chunked).startswith(b"HTTP/1.1 200")
    predict(gateway)


def worker_memory(address: str) -> int:
    """The resident bytes of the server's worker processes."""
    _, workers = server_processes(int(address.split(":")[1]))
    return sum(worker.memory_info().rss for worker in workers)


def drain(client: socket.socket, closed: threading.Event) -> None:
    """Read and drop what the server sends until it closes the connection, then set ``closed``."""
    with contextlib.suppress(OSError):
        while client.recv(1 << 20):
            pass
    closed.set()


def test_a_connection_pipelining_too_far_ahead_is_closed_and_its_worker_keeps_its_memory(demo):
    """uvicorn queued pipelined requests with no bound, and read on after every answer: one
    connection sending them as fast as it could (reading its answers) took the demo's worker
    from 227 MB to 1.3 GB in 7 s."""
    gateway, monitor, _ = demo
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    for address in (gateway, monitor):
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(request * 10)  # a client that pipelines a few is answered
            answered = b""
            while answered.count(b"HTTP/1.1 200") < 10:
                answered += client.recv(65536)
        before = worker_memory(address)
        with socket.create_connection((host, int(port)), timeout=10) as client:
            closed = threading.Event()
            threading.Thread(target=drain, args=(client, closed), daemon=True).start()
            deadline = time.monotonic() + 5
            with contextlib.suppress(OSError):  # the server closes the connection
                while not closed.is_set() and time.monotonic() < deadline:
                    client.sendall(request * 10_000)
            assert closed.wait(5), "the connection is still open"
        assert worker_memory(address) - before < 100 * 2**20
    predict(gateway)


def test_bodies_still_arriving_hold_a_bounded_share_of_memory(demo):
    """Clients that send most of a large body and stop are gathered only up to
    ``limits.max_arriving_body_bytes`` for the whole worker: past it a prediction or a label
    gets a 429 with Retry-After, its bytes let go, while bodies that come whole are served as
    ever; once the slow clients have gone, large bodies are taken again."""
    gateway, _, _ = demo
    shed_before = counted(gateway, SHED, 'reason="arriving_bodies"')
    infer = b"/v2/models/cancer/infer"
    holding = [sending(gateway, infer, 3_500_000) for _ in range(2)]  # 7 MB held
    try:
        for path in (infer, b"/feedback"):
            with sending(gateway, path, 2_000_000) as late:  # would take the worker past 8 MiB
                answer = late.recv(4096)
                assert answer.startswith(b"HTTP/1.1 429") and b"retry-after" in answer.lower()
                assert b"too many request bodies are arriving" in answer
        assert predict(gateway)["predictions"]
    finally:
        for client in holding:
            client.close()
    time.sleep(1.0)  # the server sees them go
    with sending(gateway, infer, DECLARED_BODY) as whole:
        assert whole.recv(4096).startswith(b"HTTP/1.1 400")  # taken and judged: not JSON
    assert counted(gateway, SHED, 'reason="arriving_bodies"') - shed_before == 2
    assert error_count(gateway) == 0


async def test_grpc_messages_still_arriving_hold_a_bounded_share_of_memory(demo):
    """A gRPC call whose message is not whole counts among the worker's bodies still arriving as
    the body limit (grpc does not say how much of it has come): two fill this server's 8 MiB, a
    third is refused at once, RESOURCE_EXHAUSTED with retry-after, and so is an HTTP body still
    arriving (one budget for both), while calls whose messages come whole are served as ever
    and the two are answered once their messages end."""
    gateway, _, data_dir = demo
    address = f"127.0.0.1:{load_config(data_dir.parent / 'gateway.yaml').server.grpc_port}"
    request = service_pb2.ModelInferRequest(model_name="cancer")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 30]).contents.fp32_contents[:] = ROW
    shed_before = counted(gateway, SHED, 'reason="arriving_bodies",route="grpc_infer"')
    ends = asyncio.Event()

    async def arriving():
        await ends.wait()
        yield request

    async with grpc.aio.insecure_channel(address) as channel:  # renewed after 2 s: be quick
        infer = channel.stream_unary(  # a unary method, its message sent when the caller says
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        holding = [asyncio.ensure_future(infer(arriving(), timeout=10)) for _ in range(2)]
        await asyncio.sleep(0.3)
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer(arriving(), timeout=10)
        assert time.monotonic() - began < 1.0  # at once, not when its connection is renewed
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many request bodies are arriving" in refused.value.details()
        assert int(dict(refused.value.trailing_metadata())["retry-after"]) >= 1
        whole = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        assert (await whole(request, timeout=5)).outputs
        with sending(gateway, b"/feedback", 1_000) as late:
            assert late.recv(4096).startswith(b"HTTP/1.1 429")
        ends.set()
        answers = await asyncio.gather(*holding)
    assert all(answer.outputs for answer in answers)
    shed = counted(gateway, SHED, 'reason="arriving_bodies",route="grpc_infer"') - shed_before
    assert shed == 1
    assert error_count(gateway) == 0


async def test_slow_grpc_clients_are_closed_and_others_still_served(demo):
    """On the gRPC port a connection that never finishes its handshake and a call whose message
    never comes are closed within twice ``request_read_timeout_s`` (grpc's own limits: 120 s for
    the first, none for the second); a client calling all the while, across the renewals that
    closing rests on, has every call answered."""
    gateway, _, data_dir = demo
    address = f"127.0.0.1:{load_config(data_dir.parent / 'gateway.yaml').server.grpc_port}"
    closed_within_s = 2 * SLOW_CLIENT_LIMIT_S + 2  # the renewal's age, its grace, a margin

    async def silent() -> float:
        began = time.monotonic()
        reader, writer = await asyncio.open_connection(*address.split(":"))
        await asyncio.wait_for(reader.read(), timeout=15)  # until the server closes
        writer.close()
        return time.monotonic() - began

    async def never_sent(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, float]:
        infer = channel.stream_unary(  # a unary method, its request messages left to the caller
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )

        async def nothing():
            await asyncio.sleep(60)
            yield service_pb2.ModelInferRequest()

        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await infer(nothing(), timeout=15)
        return closed.value.code(), time.monotonic() - began

    async def honest(channel: grpc.aio.Channel) -> int:
        live = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive
        calls, began = 0, time.monotonic()
        while time.monotonic() - began < 2.5 * SLOW_CLIENT_LIMIT_S:
            assert (await live(service_pb2.ServerLiveRequest(), timeout=5)).live
            calls += 1
            await asyncio.sleep(0.05)
        return calls

    async with grpc.aio.insecure_channel(address) as one, grpc.aio.insecure_channel(address) as two:
        silent_s, (code, never_s), calls = await asyncio.gather(
            silent(), never_sent(one), honest(two)
        )
    assert silent_s < closed_within_s
    assert code == grpc.StatusCode.UNAVAILABLE and never_s < closed_within_s
    assert calls > 20
    assert predict(gateway)["predictions"]


MADE_UP = "cancer:" + "0123456789abcdef" * 2
"""An id of the gateway's form that no gateway gave: its label would wait a day for a record."""


def test_labels_must_fit_the_model_and_name_a_real_answer(demo):
    gateway, monitor, data_dir = demo
    answer = predict(gateway, headers={"x-request-id": "my-correlation-id"})
    regression = predict(gateway, "diabetes")
    status, headers, _ = send(gateway, "POST", "/predict/cancer", b'{"instances": [[1]]}')
    assert status == 400  # a refusal: its id names an answer that is never recorded
    refused = headers["x-gateway-request-id"]
    cases = [
        ({"request_id": answer["request_id"], "label": "banana"}, "not a class"),
        ({"request_id": answer["request_id"], "label": ["benign", "benign"]}, "row"),
        ({"request_id": regression["request_id"], "label": "high"}, "regressor"),
        ({"request_id": regression["request_id"], "label": True}, "regressor"),
        ({"request_id": "my-correlation-id", "label": "benign"}, "request_id"),
        ({"request_id": "../../x:" + "0" * 32, "label": "benign"}, "request_id"),
        ({"request_id": MADE_UP, "label": "benign"}, "no answer with this id is recorded"),
        ({"request_id": refused, "label": "benign"}, "no answer with this id is recorded"),
    ]
    time.sleep(0.5)  # the record of ``answer`` reaches the monitor: rows are known there
    for label, words in cases:
        body = json.dumps({"labels": [label]}).encode()
        status, _, reply = send(gateway, "POST", "/feedback", body)
        assert status == 400 and words in json.loads(reply)["error"], (label, reply)
    reward = {"request_id": MADE_UP, "metric": "converted", "value": 1}
    status, _, reply = send(
        gateway, "POST", "/feedback", json.dumps({"rewards": [reward]}).encode()
    )
    assert status == 400 and "no answer with this id is recorded" in json.loads(reply)["error"]
    store = MonitorStore.open_sqlite(data_dir / "monitor.sqlite3")
    stored = store.db.query("SELECT request_id FROM labels UNION SELECT request_id FROM rewards")
    assert (answer["request_id"],) not in stored and (regression["request_id"],) not in stored
    assert (MADE_UP,) not in stored and (refused,) not in stored
    body = json.dumps({"labels": [{"request_id": answer["request_id"], "label": "benign"}]})
    assert send(gateway, "POST", "/feedback", body.encode())[0] == 200


def test_a_label_for_an_answer_of_an_older_release_is_taken_once_its_record_is_there(demo):
    """Ids given before request ids were signed (or before the monitor token changed) carry no
    right signature: such a label is refused while no record of it is there, stored once one is."""
    gateway, monitor, data_dir = demo
    unsigned = "cancer:" + "fedcba9876543210" * 2
    label = json.dumps({"labels": [{"request_id": unsigned, "label": "benign"}]}).encode()
    record = {
        "request_id": unsigned,
        "at": time.time(),
        "endpoint": "cancer",
        "variant": "stable",
        "model": "cancer:v1",
        "predictions": ["benign"],
        "latency_s": 0.001,
    }
    body = json.dumps({"records": [record]}).encode()
    status, _, answer = send(monitor, "POST", "/records", body, MONITOR_AUTH)
    assert status == 200 and json.loads(answer) == {"stored": 1, "refused": 0}
    status, _, reply = send(gateway, "POST", "/feedback", label)
    assert status == 200 and json.loads(reply)["results"][0]["outcome"] == "stored", reply
    store = MonitorStore.open_sqlite(data_dir / "monitor.sqlite3")
    assert store.db.query("SELECT label FROM labels WHERE request_id = ?", [unsigned]) == [
        ('"benign"',)
    ]


def test_dark_variants_are_pinned_only_with_the_admin_token(demo):
    gateway, _, _ = demo
    infer = json.dumps(
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": ROW}]}
    ).encode()
    dark = [
        ("/predict/dark", {"x-gateway-variant": "candidate"}, "candidate"),
        ("/predict/dark", {"x-gateway-variant": "mirror"}, "mirror"),
        ("/v2/models/dark/versions/v2/infer", {}, "candidate"),
        ("/v2/models/dark/versions/v3-shadow/infer", {}, "mirror"),
        ("/v2/models/dark/infer", {"x-gateway-variant": "candidate"}, "candidate"),
    ]
    for path, headers, variant in dark:
        body = infer if "/v2/" in path else json.dumps({"instances": [ROW]}).encode()
        status, _, reply = send(gateway, "POST", path, body, headers)
        assert status == 403 and "admin token" in json.loads(reply)["error"], path
        wrong = {**headers, "Authorization": "Bearer not-the-admin-token"}
        assert send(gateway, "POST", path, body, wrong)[0] == 403, path
        status, answer_headers, _ = send(gateway, "POST", path, body, {**headers, **ADMIN_AUTH})
        assert status == 200 and answer_headers["x-gateway-variant"] == variant, path
    status, _, listing = send(gateway, "GET", "/endpoints")
    variants = json.loads(listing)["endpoints"]["dark"]["variants"]
    assert [v["name"] for v in variants] == ["stable"]  # dark ones are not shown anonymously
    status, _, listing = send(gateway, "GET", "/endpoints", headers=ADMIN_AUTH)
    variants = json.loads(listing)["endpoints"]["dark"]["variants"]
    assert {v["name"] for v in variants} == {"stable", "candidate", "mirror"}
    for headers, versions in (({}, ["v1"]), (ADMIN_AUTH, ["v1", "v2", "v3-shadow"])):
        _, _, metadata = send(gateway, "GET", "/v2/models/dark", headers=headers)
        assert sorted(json.loads(metadata)["versions"]) == versions
        _, _, index = send(gateway, "POST", "/v2/repository/index", b"{}", headers)
        listed = sorted(e["version"] for e in json.loads(index) if e["name"] == "dark")
        assert listed == versions
    assert send(gateway, "GET", "/v2/models/dark/versions/v2/ready")[0] == 404
    assert send(gateway, "GET", "/v2/models/dark/versions/v2/ready", headers=ADMIN_AUTH)[0] == 200


def test_a_reused_request_id_keeps_every_record(demo):
    gateway, monitor, data_dir = demo
    headers = {"x-request-id": "reused-by-a-careless-client"}
    answers = [predict(gateway, headers=headers) for _ in range(4)]
    ids = {a["request_id"] for a in answers}
    assert len(ids) == 4 and all(a["correlation_id"] == headers["x-request-id"] for a in answers)
    store = MonitorStore.open_sqlite(data_dir / "monitor.sqlite3")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        marks = ",".join("?" * len(ids))
        found = store.db.query(
            f"SELECT COUNT(*) FROM predictions WHERE request_id IN ({marks})", list(ids)
        )
        if found[0][0] == 4:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("not every record of a reused x-request-id reached the monitor")


def test_metrics_and_reports_need_a_token_by_default(demo):
    gateway, _, _ = demo
    assert send(gateway, "GET", "/metrics")[0] == 401
    assert send(gateway, "GET", "/metrics", headers=METRICS_AUTH)[0] == 200
    assert send(gateway, "GET", "/reports")[0] == 401
    assert send(gateway, "GET", "/reports", headers=METRICS_AUTH)[0] == 401
    assert send(gateway, "GET", "/reports", headers=ADMIN_AUTH)[0] == 200
    assert send(gateway, "GET", "/admin/routing", headers=METRICS_AUTH)[0] == 401
    for method, path in (
        ("GET", "/admin/experiments/cancer"),
        ("POST", "/admin/experiments/cancer/start"),
    ):
        assert send(gateway, method, path)[0] == 401
        assert send(gateway, method, path, headers=METRICS_AUTH)[0] == 401


def test_a_monitor_without_a_token_refuses_a_non_loopback_address(tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump({"endpoints": {"e": {"variants": [{"name": "s", "model": "m:v1"}]}}})
    )
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_MONITOR_TOKEN"}
    gateway = Path(sys.executable).with_name("gateway")
    refused = subprocess.run(
        [str(gateway), "monitor", "--config", str(config), "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "GATEWAY_MONITOR_TOKEN" in refused.stderr
    assert load_config(config).server.host == load_config(config).monitor.host == "127.0.0.1"


def test_the_servers_still_serve_after_the_corpus(demo):
    gateway, monitor, _ = demo
    assert predict(gateway)["predictions"]
    assert send(monitor, "GET", "/summary", headers=MONITOR_AUTH)[0] == 200
    assert error_count(gateway) == 0
