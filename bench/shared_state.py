"""What the shared state costs and how fast it moves: records ingested per second by a monitor's
store into SQLite and into PostgreSQL (one monitor, then two writing at once as two monitors on two
machines would); how long a routing save takes to be heard by another process (LISTEN/NOTIFY); and
end to end, how long a weight change made through one gateway replica takes to be served by
another (two real gateways of two workers each: on PostgreSQL with separate data directories, as
two machines; on SQLite sharing one data directory, as one machine, whose followers poll).

Run: ``.venv/bin/python bench/shared_state.py [seconds]`` (default 10 per measurement). Starts its
own throwaway PostgreSQL cluster (tests/postgres.py: Debian's ``postgresql`` package, as
``make test`` installs it) with the server's defaults (fsync and synchronous_commit on). Each
batch is 500 records of a 30-feature request with its inputs kept (``monitor.batch_records``'s
default), written as the monitor writes a batch from a gateway. Results go to
bench/results/shared_state.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import HOME, register_demo_models, write_results  # noqa: E402
from monitors.records import PredictionRecord  # noqa: E402
from monitors.store import MonitorStore  # noqa: E402
from service.launch import running_server  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.postgres import PostgresDatabase, listen_forever  # noqa: E402
from storage.sqlite import SQLiteDatabase  # noqa: E402
from tests.postgres import running_cluster  # noqa: E402
from traffic.store import ROUTING_CHANNEL, RoutingState, SQLStateStore  # noqa: E402
from traffic.table import EndpointTable, VariantSpec  # noqa: E402

BATCH = 500
ROW = np.random.default_rng(0).random(30).round(4).tolist()
TABLE = EndpointTable(
    "cancer",
    (
        VariantSpec("stable", "cancer:v1", "stable", 90),
        VariantSpec("candidate", "cancer:v2", "candidate", 10),
    ),
)


def batch() -> list[PredictionRecord]:
    prefix = uuid.uuid4().hex[:16]
    return [
        PredictionRecord(
            request_id=f"cancer:{prefix}{i:016x}",
            at=time.time(),
            endpoint="cancer",
            variant="stable",
            model="cancer:v1",
            predictions=["benign"],
            latency_s=0.003,
            inputs=[ROW],
            unit=f"{i % 997:016x}",
        )
        for i in range(BATCH)
    ]


def ingest(open_database, writers: int, seconds: float) -> float:
    """Records per second stored by ``writers`` stores writing batches at once."""
    stores = [MonitorStore(open_database()) for _ in range(writers)]
    batches = [[batch() for _ in range(20)] for _ in range(writers)]
    counts = [0] * writers
    stop = time.monotonic() + seconds

    def write(index: int) -> None:
        turn = 0
        while time.monotonic() < stop:
            counts[index] += stores[index].add_records(batches[index][turn % 20])
            batches[index][turn % 20] = batch()  # new ids, so every record is new
            turn += 1

    started = time.monotonic()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for store in stores:
        store.db.close()
    return sum(counts) / elapsed


async def propagation(dsn: str, samples: int = 50) -> dict:
    """Seconds from the start of a routing save in one process to its notification in another
    (the save's own commit included)."""
    writer = SQLStateStore(PostgresDatabase(dsn))
    heard: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    connected = asyncio.Event()
    listener = asyncio.create_task(
        listen_forever(
            dsn,
            ROUTING_CHANNEL,
            lambda v: heard.put_nowait((v, time.perf_counter())),
            connected.set,
        )
    )
    await connected.wait()
    delays = []
    for _ in range(samples):
        before = writer.load()
        version = before.version if before else 0
        sent = time.perf_counter()
        await asyncio.to_thread(writer.save, RoutingState(0, "bench", {"cancer": TABLE}), version)
        payload, at = await asyncio.wait_for(heard.get(), 5)
        assert payload == str(version + 1)
        delays.append(at - sent)
        await asyncio.sleep(0.02)
    listener.cancel()
    writer.db.close()
    delays.sort()
    return {
        "p50_ms": round(statistics.median(delays) * 1000, 2),
        "p99_ms": round(delays[int(len(delays) * 0.99) - 1] * 1000, 2),
        "max_ms": round(delays[-1] * 1000, 2),
    }


def replica_propagation(directory: Path, backend: str, env: dict, samples: int = 20) -> dict:
    """Milliseconds from a weight change's answer on replica A to replica B serving it to every
    one of 20 keyed requests (B's two workers both follow), over ``samples`` changes."""
    shared = directory / f"{backend}-shared-data"
    configs = []
    for name in ("a", "b"):
        config = {
            "model_store": str(HOME / "bentoml"),
            "data_dir": str(directory / f"{backend}-{name}" if backend == "postgres" else shared),
            "server": {"workers": 2},
            "state": {"backend": backend},
            "endpoints": {
                "ab": {
                    "routing": {"key": {"header": "x-user-id"}},
                    "variants": [
                        {"name": "a", "model": "cancer:v1", "weight": 100},
                        {"name": "b", "model": "cancer:v2", "weight": 0},
                    ],
                }
            },
        }
        path = directory / f"{backend}-{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        configs.append(path)
    env = {**env, "GATEWAY_ADMIN_TOKEN": "bench-admin-token"}
    admin = {"Authorization": "Bearer bench-admin-token"}
    body = json.dumps({"instances": [ROW]}).encode()
    delays = []
    with running_server(configs[0], env=env) as a, running_server(configs[1], env=env) as b:
        with httpx.Client(timeout=10) as client:
            for turn in range(samples):
                serving = "b" if turn % 2 == 0 else "a"
                weights = {"a": 0, "b": 100} if serving == "b" else {"a": 100, "b": 0}
                answer = client.put(
                    f"{a}/admin/endpoints/ab/weights", json={"weights": weights}, headers=admin
                )
                answer.raise_for_status()
                changed = time.perf_counter()
                while True:
                    variants = {
                        client.post(
                            f"{b}/predict/ab", content=body, headers={"x-user-id": f"u{user}"}
                        ).headers["x-gateway-variant"]
                        for user in range(20)
                    }
                    if variants == {serving}:
                        break
                delays.append(time.perf_counter() - changed)
    delays.sort()
    return {
        "p50_ms": round(statistics.median(delays) * 1000, 1),
        "max_ms": round(delays[-1] * 1000, 1),
    }


def main(seconds: float) -> None:
    register_demo_models()
    results: dict = {"batch_records": BATCH, "seconds": seconds, "ingest": []}
    with tempfile.TemporaryDirectory() as directory, running_cluster() as cluster:
        counter = iter(range(1000))

        def sqlite() -> Database:
            return SQLiteDatabase(Path(directory) / f"monitor-{next(counter)}.sqlite3", 10.0)

        shared_sqlite = Path(directory) / "shared.sqlite3"
        engines = {
            ("sqlite", 1): sqlite,
            ("sqlite", 2): lambda: SQLiteDatabase(shared_sqlite, 10.0),
        }
        for writers in (1, 2):
            dsn = cluster.new_database()
            engines[("postgres", writers)] = lambda dsn=dsn: PostgresDatabase(dsn)
        for (engine, writers), open_database in engines.items():
            rate = ingest(open_database, writers, seconds)
            row = {"engine": engine, "writers": writers, "records_per_s": round(rate)}
            print(row)
            results["ingest"].append(row)
        results["notify_propagation"] = asyncio.run(propagation(cluster.new_database()))
        print("save + LISTEN/NOTIFY:", results["notify_propagation"])
        results["replica_propagation"] = []
        for backend in ("postgres", "sqlite"):
            env = {"GATEWAY_DATABASE_URL": cluster.new_database()}
            row = {"backend": backend, **replica_propagation(Path(directory), backend, env)}
            print(row)
            results["replica_propagation"].append(row)
    write_results("shared_state", results)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
