"""Starting a server process (service/launch.py): one that exits while starting is started once
more, one that keeps failing fails with the reason, and one whose starter is killed ends too, on
real processes; each server's metrics directory is private, emptied only when its port is free, and
removed after a server we stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import psutil
import pytest

from service import launch
from service.errors import ConfigError
from service.launch import (
    METRICS_DIR_ENV,
    START_ATTEMPTS,
    ServerExited,
    free_port,
    fresh_metrics_dir,
    serve_env,
    start_ready,
    stop,
)
from tests.helpers import until

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import http.server, sys
from pathlib import Path
starts, port, fail_first = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
starts.write_text(starts.read_text() + "start\\n" if starts.exists() else "start\\n")
if starts.read_text().count("start") <= fail_first:
    sys.exit(1)  # as BentoML's arbiter does when a port it picked was taken meanwhile

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Ready).serve_forever()
"""


def server(tmp_path: Path, failing_starts: int) -> tuple[str, list[str], Path]:
    """A base URL, a command serving ``/readyz`` there after ``failing_starts`` failed starts,
    and the file counting its starts."""
    port, starts = free_port(), tmp_path / "starts"
    command = [sys.executable, "-c", SERVER, str(starts), str(port), str(failing_starts)]
    return f"http://127.0.0.1:{port}", command, starts


def test_a_server_that_exits_while_starting_is_started_once_more(tmp_path):
    url, command, starts = server(tmp_path, failing_starts=1)
    process = start_ready(url, command, {}, None)
    try:
        assert process.poll() is None
        assert starts.read_text().count("start") == 2
    finally:
        stop(process)


def test_a_server_that_keeps_exiting_fails_saying_so_after_the_last_attempt(tmp_path):
    url, command, starts = server(tmp_path, failing_starts=START_ATTEMPTS)
    with pytest.raises(ServerExited, match="exited with code 1"):
        start_ready(url, command, {}, None)
    assert starts.read_text().count("start") == START_ATTEMPTS


PARENT = """
import os, sys, time
from service.launch import start_ready
url, pid_file, command = sys.argv[1], sys.argv[2], sys.argv[3:]
process = start_ready(url, command, {}, None)
with open(pid_file + ".part", "w") as part:
    part.write(str(process.pid))
os.rename(pid_file + ".part", pid_file)  # whole or absent: never read half written
time.sleep(600)
"""


def ended(process: psutil.Process) -> bool:
    """Gone, or a zombie nobody has reaped yet (as init may leave it in a container)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_ends_when_the_process_that_started_it_is_killed(tmp_path):
    url, command, _ = server(tmp_path, failing_starts=0)
    pid_file = tmp_path / "server.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, url, str(pid_file), *command], cwd=ROOT
    )
    try:
        until(lambda: pid_file.exists() or parent.poll() is not None, timeout_s=30)
        server_process = psutil.Process(int(pid_file.read_text()))
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
            assert answer.status == 200
        parent.kill()  # SIGKILL: no cleanup of its own runs
        parent.wait()
        assert until(lambda: ended(server_process), timeout_s=10), (
            "the server outlived the process that started it"
        )
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/readyz", timeout=2)
    finally:
        parent.kill()
        if pid_file.exists():
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(int(pid_file.read_text())).kill()


@pytest.fixture
def temporary_dir(tmp_path, monkeypatch) -> Path:
    """The temporary directory the code under test sees (its own, not the machine's /tmp)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_metrics_directory_is_emptied_under_a_parent_of_this_users_alone(temporary_dir):
    port = free_port()
    old = temporary_dir / f"gateway-metrics-{os.getuid()}" / str(port) / "counter_1.db"
    first = fresh_metrics_dir(port)
    old.write_bytes(b"a stopped server's counts")
    again = fresh_metrics_dir(port)
    assert again == first == old.parent and list(again.iterdir()) == []
    assert stat.S_IMODE(again.parent.lstat().st_mode) == 0o700


def test_a_start_on_a_live_servers_port_is_refused_and_leaves_its_metrics_alone(
    tmp_path, temporary_dir
):
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        port = live.getsockname()[1]
        counts = temporary_dir / f"gateway-metrics-{os.getuid()}" / str(port) / "counter_1.db"
        counts.parent.mkdir(parents=True, mode=0o700)
        counts.write_bytes(b"the live server's counts")
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is taken"):
            serve_env(tmp_path / "gateway.yaml", port, "127.0.0.1")
        assert counts.read_bytes() == b"the live server's counts"


@pytest.mark.parametrize("planted", ["a link to another directory", "a directory open to all"])
def test_a_parent_another_user_could_have_planted_is_refused(temporary_dir, planted):
    parent = temporary_dir / f"gateway-metrics-{os.getuid()}"
    elsewhere = temporary_dir / "elsewhere"
    (elsewhere / "kept").mkdir(parents=True)
    if planted == "a link to another directory":
        parent.symlink_to(elsewhere)
    else:
        parent.mkdir()
        parent.chmod(0o777)
    with pytest.raises(ConfigError, match="must be a directory of this user's alone"):
        fresh_metrics_dir(free_port())
    assert [p.name for p in elsewhere.iterdir()] == ["kept"]


def test_a_server_started_here_has_its_metrics_directory_removed_when_stopped(
    tmp_path, temporary_dir, monkeypatch
):
    starts, seen = tmp_path / "starts", {}

    def fake_server(port: int, host: str, service: str) -> list[str]:
        return [sys.executable, "-c", SERVER, str(starts), str(port), "0"]

    def start(url, command, env, log):
        seen["dir"] = Path(env[METRICS_DIR_ENV])
        return start_ready(url, command, env, log)

    monkeypatch.setattr(launch, "serve_command", fake_server)
    monkeypatch.setattr(launch, "start_ready", start)
    with launch.running_server(tmp_path / "gateway.yaml"):
        assert seen["dir"].is_dir()
    assert not seen["dir"].exists()


def test_a_free_port_is_drawn_below_the_ports_the_kernel_hands_out_and_skips_taken_ones(
    monkeypatch,
):
    """Ports the kernel hands out by itself (outgoing connections, bind to port 0) can be taken
    by any process between the draw and the server's bind; ports below that range cannot."""
    low = int(launch.EPHEMERAL_RANGE.read_text().split()[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", low - 1))
        draws = iter([low - 1, low - 2])  # the first is in use: the next draw is returned
        monkeypatch.setattr(launch.random, "randrange", lambda a, b: next(draws))
        assert free_port() == low - 2
    monkeypatch.undo()
    ports = [free_port() for _ in range(50)]
    assert all(low - launch.PORTS_BELOW_EPHEMERAL <= p < low for p in ports), ports
    for port in ports[:5]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
