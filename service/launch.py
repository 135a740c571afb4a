"""How a gateway or monitor server is started: the ``bentoml serve`` command and environment
(``gateway serve`` and ``gateway monitor`` exec them), and a child process on loopback waited on
until it is ready.

Used by the CLI, the demo, the integration tests and the benchmarks, so all of them start the real
server the same way: ``bentoml serve`` in its own process group, torn down as a whole, and ended
when the process that started it dies.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from service.config import CONFIG_ENV
from service.errors import ConfigError

METRICS_DIR_ENV = "GATEWAY_METRICS_DIR"
"""Each server's own Prometheus multiprocess directory (service/bentoml_fixes.py switches to it)."""
HOST_ENV = "GATEWAY_HOST"
"""The address the server's HTTP listens on (``--host``), which its gRPC listens on too: BentoML
does not tell its workers, and the config's ``server.host`` may say another."""
GATEWAY_SERVICE = "service.gateway.bento:GatewayService"
MONITOR_SERVICE = "service.monitor.bento:MonitorService"
DIE_WITH_PARENT = Path(__file__).with_name("die_with_parent.py")


def serve_command(port: int, host: str, service: str = GATEWAY_SERVICE) -> list[str]:
    """The ``bentoml serve`` command line for a service (its env comes from ``serve_env``)."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    return [str(bentoml_cli), "serve", service, "--port", str(port), "--host", host]


def serve_env(config_path: Path, port: int, host: str) -> dict[str, str]:
    """The server's environment: its config, the address it listens on, and a metrics directory
    of its own.

    BentoML keeps every server's metric files in one directory under its home and empties it when a
    server starts, so a second gateway on the same model store would wipe the first one's metrics.
    Each server therefore gets a fresh directory per port (service/bentoml_fixes.py switches to it),
    emptied only once the port is known to be free: a second start on a live server's port would
    otherwise delete the files its workers count in, and its metrics would vanish until it restarts.
    """
    check_port_free(port, host)
    return {
        **os.environ,
        CONFIG_ENV: str(Path(config_path).resolve()),
        HOST_ENV: host,
        METRICS_DIR_ENV: str(fresh_metrics_dir(port)),
    }


def check_port_free(port: int, host: str) -> None:
    """Raise ``ConfigError`` when ``host:port`` cannot be listened on: a server is there, or the
    host is no address."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ConfigError(f"the host {host!r} to serve on is not an address: {error}") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise ConfigError(
                f"port {port} on {host} is taken ({error.strerror}): is a server running there?"
            ) from None


def fresh_metrics_dir(port: int) -> Path:
    """An empty metrics directory for the server about to listen on ``port``:
    ``gateway-metrics-<uid>/<port>`` in the temporary directory, emptied as prometheus_client's
    multiprocess mode needs between runs. The parent is this user's alone (mode 0700, not a link),
    so other local users can neither read the counters nor take the path first to stop a start.
    """
    parent = Path(tempfile.gettempdir()) / f"gateway-metrics-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        parent.mkdir(mode=0o700)
    found = parent.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ConfigError(
            f"{parent} must be a directory of this user's alone (mode 0700, not a link); "
            "remove it and start again"
        )
    directory = parent / str(port)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
"""Where Linux says which ports it hands out by itself (to outgoing connections and ``bind`` to
port 0)."""
PORTS_BELOW_EPHEMERAL = 10_000
"""How many ports below that range ``free_port`` draws from."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, drawn below the range the kernel
    hands out by itself: a port from that range can be taken by any process's next outgoing
    connection before the server binds it, and a gRPC port is bound only once a worker has loaded
    its models, seconds later (a CI run lost a server that way: every worker failed to bind its
    gRPC port for 180 s)."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768  # Linux's default; the range is the same on most systems
    for _ in range(100):
        port = random.randrange(max(1_024, low - PORTS_BELOW_EPHEMERAL), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port below {low} on 127.0.0.1 after 100 draws")


START_ATTEMPTS = 2
"""``running_server`` starts a server that exits while starting once more. BentoML's arbiter binds
a control port it found free a moment before, and a server starting beside it can take that port
first (``zmq.error.ZMQError: Address already in use``, seen once in a CI run of the suite); a real
start-up error fails both times, with the same output."""


class ServerExited(RuntimeError):
    """The server's process ended before it was ready."""


def wait_ready(base_url: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    """Poll ``/readyz`` until the gateway is ready; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(f"the gateway exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Stop the gateway's whole process group (BentoML's arbiter and its workers)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running_server(
    config_path: Path,
    port: int | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    service: str = GATEWAY_SERVICE,
) -> Iterator[str]:
    """A ready gateway (``service=GATEWAY_SERVICE``) or monitor (``MONITOR_SERVICE``) for
    ``config_path`` on 127.0.0.1, ``env`` added to its environment; yields its base URL, stops it
    after."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed below
    try:
        command = serve_command(port, "127.0.0.1", service)
        server_env = {**serve_env(config_path, port, "127.0.0.1"), **(env or {})}
        process = start_ready(base_url, command, server_env, log)
        try:
            yield base_url
        finally:
            stop(process)
            shutil.rmtree(server_env[METRICS_DIR_ENV], ignore_errors=True)
    finally:
        if log:
            log.close()


def _dying_with_this_process(command: list[str]) -> list[str]:
    """``command`` run so that it ends (SIGTERM) when this process dies, even by SIGKILL
    (service/die_with_parent.py; Linux only, elsewhere as it is)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, str(DIE_WITH_PARENT), str(os.getpid()), *command]


def start_ready(
    base_url: str, command: list[str], env: dict[str, str], log: IO[bytes] | None
) -> subprocess.Popen:
    """The server's process once it is ready at ``base_url``; one that exits while starting is
    started again (``START_ATTEMPTS``), one that fails otherwise is stopped. It ends when this
    process does, however this one ends."""
    attempt = 1
    while True:
        process = subprocess.Popen(
            _dying_with_this_process(command),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
        )
        try:
            wait_ready(base_url, process)
            return process
        except ServerExited:
            if attempt == START_ATTEMPTS:
                raise
            attempt += 1
        except BaseException:
            stop(process)
            raise
