"""Fault injection on real processes (loopback only): what was acknowledged survives ``kill -9``,
a crash between a rollout's save and apply is finished after the restart and announced once, a
full disk refuses labels with a 503 and stores nothing half, and a locked routing database delays
start-up and routing updates without failing them or flooding the log.

BentoML's arbiter starts a worker again when it dies, as a supervisor would restart a process:
the tests kill workers with SIGKILL and let that happen.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from monitors.store import MonitorStore
from service.config import load_config
from service.launch import MONITOR_SERVICE, free_port, running_server
from service.names import RequestIds
from tests.helpers import (
    ADMIN_AUTH,
    ADMIN_ENV,
    MONITOR_AUTH,
    MONITOR_TOKEN,
    ROW,
    drive,
    local_monitor,
    loopback_receiver,
    metric_total,
    rollout_config,
    scrape,
    server_processes,
    write_config,
)

pytestmark = pytest.mark.integration


async def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


async def test_a_monitor_killed_between_saving_and_applying_a_rollback_finishes_it(
    demo_models, tmp_path
):
    events: list[dict] = []

    async def take(request):
        events.append(await request.json())
        return web.json_response({})

    hook, cleanup = await loopback_receiver("/hook", take)
    config, port = rollout_config(tmp_path, faults={"error_rate": 0.5}, webhook=hook)
    marker = tmp_path / "crashed"
    crash = {"GATEWAY_CRASH_AT": "rollout_saved:rollback", "GATEWAY_CRASH_MARKER": str(marker)}
    log = tmp_path / "monitor.log"
    with (
        running_server(config, port=port, service=MONITOR_SERVICE, env=crash, log_path=log),
        running_server(config, env=ADMIN_ENV) as url,
    ):
        async with aiohttp.ClientSession() as session:

            async def rolled_back() -> bool:
                await drive(session, url, seconds=0.5)
                path = f"{url}/admin/rollouts/cancer?history=100"
                async with session.get(path, headers=ADMIN_AUTH) as answer:
                    state = await answer.json() if answer.status == 200 else {}
                routing = f"{url}/admin/routing"
                async with session.get(routing, headers=ADMIN_AUTH) as answer:
                    table = (await answer.json())["endpoints"]["cancer"]["variants"]
                weights = {v["name"]: v["weight"] for v in table}
                return bool(state.get("applied")) and weights["candidate"] == 0

            await wait_until(rolled_back, 40, "the rollback was not applied after the crash")
            async with session.get(
                f"{url}/admin/rollouts/cancer?history=100", headers=ADMIN_AUTH
            ) as answer:
                described = await answer.json()
        await asyncio.sleep(1.0)  # the released event is delivered
    await cleanup()
    assert marker.exists(), "the monitor never reached the crash point"
    assert "crash point rollout_saved:rollback reached" in log.read_text()
    assert described["state"]["phase"] == "rolled_back"
    actions = [e["action"] for e in described["history"]]
    assert "rollback" not in actions and actions.count("reapply") == 1, actions  # died before
    rollbacks = {e["id"] for e in events if e["kind"] == "rollout_rollback"}
    assert len(rollbacks) == 1, events  # announced after the restart, once (by id)


async def test_acknowledged_labels_survive_kill_9_of_a_gateway_worker_and_of_the_monitor(
    demo_models, tmp_path
):
    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        server={"workers": 2},
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port),
    )
    acknowledged: dict[str, str] = {}
    failures = 0
    with (
        running_server(config, port=port, service=MONITOR_SERVICE) as monitor_url,
        running_server(config, env=ADMIN_ENV) as url,
    ):
        gateway_port = int(url.rsplit(":", 1)[1])
        stop = time.monotonic() + 7

        async def client(session: aiohttp.ClientSession, user: int) -> None:
            nonlocal failures
            while time.monotonic() < stop:
                try:
                    async with session.post(
                        f"{url}/predict/cancer", json={"instances": [ROW]}
                    ) as answer:
                        if answer.status != 200:
                            failures += 1
                            continue
                        body = await answer.json()
                    label = {"request_id": body["request_id"], "label": "benign"}
                    async with session.post(f"{url}/feedback", json=label) as answer:
                        if answer.status == 200:
                            acknowledged[label["request_id"]] = "benign"
                        else:
                            failures += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    failures += 1
                    await asyncio.sleep(0.05)

        async def kill() -> None:
            await asyncio.sleep(2)
            server_processes(gateway_port)[1][0].send_signal(signal.SIGKILL)
            await asyncio.sleep(2)
            server_processes(port)[1][0].send_signal(signal.SIGKILL)

        connector = aiohttp.TCPConnector(force_close=True)  # spread over both gateway workers
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(kill(), *(client(session, i) for i in range(8)))

            async def monitor_back() -> bool:
                path = f"{monitor_url}/summary"
                async with session.get(path, headers=MONITOR_AUTH) as answer:
                    return answer.status == 200

            await wait_until(monitor_back, 30, "the monitor did not come back")

            # The killed worker never marked itself dead: its routing version stayed in the
            # replica's minimum, which then looked behind for good after a routing change.
            async def replaced() -> bool:
                return len(server_processes(gateway_port)[1]) == 2

            await wait_until(replaced, 30, "the killed gateway worker was not replaced")
            weights = {"weights": {"stable": 80, "candidate": 20}}
            path = f"{url}/admin/endpoints/cancer/weights"
            async with session.put(path, json=weights, headers=ADMIN_AUTH) as answer:
                assert answer.status == 200, await answer.text()
                version = (await answer.json())["version"]

            async def followed() -> bool:
                text = await scrape(session, url)
                return metric_total(text, "gateway_routing_state_version ") == version

            await wait_until(followed, 10, f"the replica's routing version never reached {version}")
    store = MonitorStore.open_sqlite(load_config(config).data_dir / "monitor.sqlite3")
    stored = dict(store.db.query("SELECT request_id, label FROM labels"))
    missing = [i for i in acknowledged if stored.get(i) != '"benign"']
    assert len(acknowledged) > 50 and failures > 0, (len(acknowledged), failures)
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged labels lost"


async def test_a_full_disk_refuses_labels_whole_and_the_monitor_serves_on(demo_models, tmp_path):
    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port, max_db_mb=1),
    )

    ids = RequestIds(MONITOR_TOKEN)  # of answers whose records have not arrived yet

    def batch() -> list[dict]:  # labels waiting for predictions: ~1 KB each
        return [{"request_id": ids.new("cancer"), "label": ["malignant"] * 100} for _ in range(100)]

    with (
        running_server(config, port=port, service=MONITOR_SERVICE) as monitor_url,
        running_server(config) as url,
    ):
        async with aiohttp.ClientSession() as session:
            for _ in range(40):  # fill the 1 MB database
                refused = batch()
                async with session.post(f"{url}/feedback", json={"labels": refused}) as answer:
                    if answer.status == 503:
                        assert answer.headers["Retry-After"]
                        assert "full" in (await answer.json())["error"]
                        break
                    assert answer.status == 200
            else:
                raise AssertionError("the monitor's database never filled up")
            for path in ("/summary", "/metrics"):
                async with session.get(f"{monitor_url}{path}", headers=MONITOR_AUTH) as answer:
                    assert answer.status == 200, path
            async with session.post(f"{url}/predict/cancer", json={"instances": [ROW]}) as answer:
                assert answer.status == 200
    store = MonitorStore.open_sqlite(load_config(config).data_dir / "monitor.sqlite3")
    marks = ",".join("?" * len(refused))
    ids = [label["request_id"] for label in refused]
    found = store.db.query(f"SELECT COUNT(*) FROM labels WHERE request_id IN ({marks})", ids)
    assert found == [(0,)]  # nothing of the refused call was stored


LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS lock_probe (x)")
if sys.argv[3] == "exclusive":  # nobody may read: possible only while nobody has it open
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT INTO lock_probe VALUES (1)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def hold_lock(path: Path, seconds: float, mode: str) -> subprocess.Popen:
    """Another process holding the database locked for ``seconds``: ``exclusive`` (reads too;
    taken before anyone else opens it) or ``write`` (a long write, as a backup or a migration)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCK, str(path), str(seconds), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout.readline().strip() == "locked"
    return locker


async def test_a_locked_routing_database_delays_start_and_refuses_changes_with_503(
    demo_models, tmp_path
):
    config = write_config(tmp_path / "gateway.yaml", data_dir=str(tmp_path / "data"))
    database = load_config(config).data_dir / "routing.sqlite3"
    log = tmp_path / "gateway.log"
    locker = hold_lock(database, 12, "exclusive")  # past start-up and one attempt (5 s)
    started = time.monotonic()
    with running_server(config, log_path=log, env=ADMIN_ENV) as url:
        assert time.monotonic() - started >= 11  # it waited for the lock, then started
        locker.wait()
        async with aiohttp.ClientSession() as session:
            locker = hold_lock(database, 7, "write")
            weights = {"weights": {"stable": 100, "candidate": 0}}
            path = f"{url}/admin/endpoints/cancer/weights"
            async with session.put(path, json=weights, headers=ADMIN_AUTH) as answer:
                assert answer.status == 503 and answer.headers["Retry-After"] == "1"
                assert "nothing was changed" in (await answer.json())["error"]
            answers = []
            for _ in range(10):
                async with session.post(f"{url}/predict/cancer", json={"instances": [ROW]}) as a:
                    answers.append(a.status)
            assert answers == [200] * 10  # serving never waits on the store
            locker.wait()
            async with session.put(path, json=weights, headers=ADMIN_AUTH) as answer:
                assert answer.status == 200
            async with session.post(f"{url}/predict/cancer", json={"instances": [ROW]}) as a:
                assert a.headers["x-gateway-variant"] == "stable"
    text = log.read_text()
    assert text.count("opening the routing state failed") == 1, text[-3000:]
    assert "opening the routing state succeeded" in text
    assert "cannot follow the routing state" not in text  # readers never wait on a writer (WAL)
    assert sqlite3.connect(database).execute("SELECT version FROM routing").fetchone()[0] >= 2
