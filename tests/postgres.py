"""A throwaway PostgreSQL cluster for the tests and benchmarks: Debian's server binaries, a data
directory in a temporary folder, a free loopback port, started as a non-root user (the server
refuses to run as root), stopped and removed at the end.

``make test`` installs Debian's ``postgresql`` package when it is missing; if the cluster still
cannot start, ``PostgresUnavailable`` says why and the tests that need it fail with that message
(they are never skipped).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"
"""The system user Debian's package creates; the cluster runs as it when the tests run as root."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here."""


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL's server binaries are not installed (Debian package `postgresql`: "
            "`make test` installs it; run `apt-get install postgresql`)"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its port and superuser; ``dsn`` names one of its databases."""

    port: int
    user: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its DSN (each test gets its own, so none sees another's rows)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Start a cluster; stop it and delete its files on the way out."""
    binaries = _binaries()
    as_root = os.geteuid() == 0
    owner = SERVER_USER if as_root else pwd.getpwuid(os.geteuid()).pw_name
    if as_root:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"the tests run as root and there is no {SERVER_USER!r} user to run the server as"
            ) from None
    prefix = ["runuser", "-u", SERVER_USER, "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if as_root:
        shutil.chown(root, SERVER_USER)
        shutil.chown(sockets, SERVER_USER)
    port = _free_port()
    log = root / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(command[:2])} failed: {done.stderr.strip()[-2000:]}\n{tail}"
            )

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", owner, "-A", "trust", "--no-sync")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            "-c max_connections=300 -c shared_buffers=64MB"
        )
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        try:
            yield Cluster(port, owner)
        finally:
            subprocess.run(
                [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
