"""The limit on open files (service/open_files.py): a process raises its soft limit to its hard
one, and a gateway started under a low soft limit, as most systems give (1,024; 128 here, so that
the test needs few connections), still holds more callers than that at once; and connections that
send nothing do not keep a worker's files from its callers (service/http/slow_clients.py)."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from collections import Counter

import pytest

from service import launch
from tests.helpers import write_config

LOW = 128
"""The soft limit the processes here start with."""
CALLERS = 3 * LOW
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
"""This machine's hard limit: what the processes here may raise theirs to."""


def limited(command: list[str], soft: int, hard: int | None = None) -> list[str]:
    """``command`` run with a soft limit of ``soft`` open files (and a hard one of ``hard``)."""
    limits = f"ulimit -Sn {soft}" + ("" if hard is None else f" && ulimit -Hn {hard}")
    return ["sh", "-c", f'{limits} && exec "$@"', "sh", *command]


def raised(soft: int, hard: int | None = None) -> subprocess.CompletedProcess:
    """A Python process started with those limits calls ``raise_limit``: its answer and its log."""
    code = "from service import open_files; print(open_files.raise_limit())"
    return subprocess.run(
        limited([sys.executable, "-c", code], soft, hard),
        capture_output=True,
        text=True,
        check=True,
    )


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    assert HARD > LOW, f"this machine's hard limit on open files is {HARD}: the test needs more"
    run = raised(LOW)
    assert int(run.stdout) == HARD
    assert "may open" not in run.stderr


def test_a_hard_limit_too_low_to_hold_many_callers_is_warned_about() -> None:
    run = raised(LOW, LOW)
    assert int(run.stdout) == LOW
    assert f"this process may open {LOW} files" in run.stderr


@pytest.mark.integration
async def test_a_gateway_started_under_a_low_limit_holds_more_callers_than_it(
    demo_models, tmp_path, monkeypatch
) -> None:
    """``CALLERS`` connections open at once, each then asking ``/livez``: every one is answered.
    Without the raise, the worker could hold no connection past its limit: the others were closed
    unanswered (290 of 384)."""
    assert HARD > 2 * CALLERS, f"this machine's hard limit on open files is {HARD}: too few here"
    serve_command = launch.serve_command
    monkeypatch.setattr(launch, "serve_command", lambda *args: limited(serve_command(*args), LOW))
    config = write_config(tmp_path / "gateway.yaml")
    with launch.running_server(config, log_path=tmp_path / "server.log") as url:
        port = int(url.rsplit(":", 1)[1])
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CALLERS)]
        for _, writer in connections:
            writer.write(b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n")
        answers = await asyncio.wait_for(
            asyncio.gather(*(reader.readline() for reader, _ in connections)), timeout=15
        )
        for _, writer in connections:
            writer.close()
    assert Counter(answers) == {b"HTTP/1.1 200 OK\r\n": CALLERS}
    assert b"Too many open files" not in (tmp_path / "server.log").read_bytes()


async def livez_until_answered(port: int, within_s: float) -> float:
    """Ask ``/livez`` on a new connection until one is answered, as a caller that reconnects
    does; the seconds that took (a worker out of files closes new connections at once)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n")
        try:
            answer = await asyncio.wait_for(reader.readline(), timeout=within_s)
        except ConnectionError:
            answer = b""
        writer.close()
        if answer:
            assert answer == b"HTTP/1.1 200 OK\r\n"
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"no answer within {within_s} s")


@pytest.mark.integration
async def test_silent_connections_past_half_the_limit_do_not_keep_callers_out(
    demo_models, tmp_path, monkeypatch
) -> None:
    """More connections that send nothing than a worker may hold files: a caller behind them is
    answered within seconds. With the slow-client limit alone, the worker closed every new
    connection for the whole 30 s until a sweep closed the silent ones."""
    files = 2 * LOW
    serve_command = launch.serve_command
    monkeypatch.setattr(
        launch, "serve_command", lambda *args: limited(serve_command(*args), files, files)
    )
    config = write_config(tmp_path / "gateway.yaml")
    with launch.running_server(config, log_path=tmp_path / "server.log") as url:
        port = int(url.rsplit(":", 1)[1])
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(files + 50)]
        waited_s = await livez_until_answered(port, within_s=15)
        for _, writer in silent:
            writer.close()
    assert waited_s < 5
