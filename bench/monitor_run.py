"""Monitor run cost: what one analysis run takes on a full window, and what the monitor takes from
the machine beside a busy gateway.

Run: ``.venv/bin/python bench/monitor_run.py [--runs 5] [--seconds 30] [--stored N]
[--sampled K]``. Part 1: a store holding 10,000 records of one repeated ``cancer`` row (what a
benchmark sending one row leaves: every feature drifted), ``MonitorRunner.run_once`` timed in CPU
seconds on the monitor's analysis thread (service/monitor/priority.py), attribution off (it runs
every ``attribution_interval_s``), one more record stored before each run (a run keeps the analysis
of a variant with nothing new, timed once at the end); with ``--stored``, once more with N such
records stored (what a run reads grows with the records of the last ``window_s``); with
``--sampled``, once more with one record in K keeping its inputs (what the gateway's
``input_rows_per_s`` and ``sample_inputs`` leave under load), as many as fill the window.
Part 2: the gateway and its monitor (bench/harness.py) with the demo's monitor interval of 5 s, 64
closed-loop callers; after a warm-up that covers the monitor's first runs, each process's CPU
(cores) and the gateway's goodput over ``--seconds``. Results go to bench/results/monitor_run.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench import harness  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.serving import oip_body  # noqa: E402
from monitors.records import PredictionRecord  # noqa: E402
from monitors.reports import ReportArchive  # noqa: E402
from monitors.store import MonitorStore  # noqa: E402
from service.config import MonitorConfig  # noqa: E402
from service.monitor.metrics import MonitorMetrics  # noqa: E402
from service.monitor.priority import background_executor  # noqa: E402
from service.monitor.runs import MonitorRunner  # noqa: E402

WINDOW_ROWS = 10_000
BATCH = 20_000
DEMO_INTERVAL_S = 5
WARM_UP_S = 25.0


def run_cost(
    row: list[float], runs: int, stored: int = WINDOW_ROWS, sampled: int = 1
) -> list[float]:
    """CPU seconds of each of ``runs`` runs over a full window of one repeated row, with
    ``stored`` records of it in the store (all within the window's ``window_s``; one in
    ``sampled`` with its inputs), one more stored before each; then of a run with nothing new."""
    directory = Path(tempfile.mkdtemp(dir=harness.HOME))  # removed with it
    store = MonitorStore.open_sqlite(directory / "monitor.sqlite3")

    def add(first: int, last: int) -> None:
        store.add_records(
            PredictionRecord(
                f"r{i}",
                1000.0 + i / 1000,
                "cancer",
                "stable",
                "cancer:v1",
                ["benign"],
                0.001,
                inputs=[row] if i % sampled == 0 else None,
            )
            for i in range(first, last)
        )

    for first in range(0, stored, BATCH):
        add(first, min(stored, first + BATCH))
    config = MonitorConfig(window_rows=WINDOW_ROWS, window_s=10**9, attribution_rows=0)
    roles = {("cancer", "stable"): "stable"}
    runner = MonitorRunner(
        config, store, MonitorMetrics(CollectorRegistry()), ReportArchive(directory / "r"),
        lambda: roles,
    )  # fmt: skip
    analysis = background_executor()  # where the monitor runs them (its numeric libraries' setup)

    def run() -> float:
        started = time.process_time()  # the whole process: pool threads' spinning counts
        runner.run_once(now=2000.0)
        return time.process_time() - started

    analysis.submit(run).result()  # loads the reference
    costs = []
    for more in range(stored, stored + runs * sampled, sampled):
        add(more, more + 1)
        costs.append(analysis.submit(run).result())
    costs.append(analysis.submit(run).result())  # nothing new
    analysis.shutdown()
    return costs


def beside_gateway(body: bytes, seconds: float) -> dict:
    """Cores each server process took, and the goodput, over ``seconds`` after the warm-up."""
    with harness.gateway(monitor={"interval_s": DEMO_INTERVAL_S}) as url:
        infer = f"{url}/v2/models/cancer/infer"
        closed_loop(infer, body, 64, WARM_UP_S)
        workers = harness.worker_roles(psutil.process_iter())
        before, started = (
            {k: harness.cpu_seconds([p]) for k, p in workers.items()},
            time.monotonic(),
        )
        run = closed_loop(infer, body, 64, seconds)
        elapsed = time.monotonic() - started
        cores = {
            k: round((harness.cpu_seconds([p]) - before[k]) / elapsed, 3)
            for k, p in workers.items()
        }
    return {"goodput": round(run["goodput"]), "cores": cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--stored", type=int, default=0, help="also time a run with this many records stored"
    )
    parser.add_argument(
        "--sampled", type=int, default=0, help="also time runs with 1 record in K keeping inputs"
    )
    args = parser.parse_args()
    rows = harness.register_demo_models()
    costs = run_cost(rows[0].tolist(), args.runs)
    print(f"run_once on {WINDOW_ROWS:,} rows: CPU s {[round(c, 3) for c in costs[:-1]]}, "
          f"with nothing new {costs[-1]:.4f}")  # fmt: skip
    if args.stored:
        crowded = run_cost(rows[0].tolist(), 1, args.stored)
        print(f"run_once with {args.stored:,} records stored: CPU s {round(crowded[0], 3)}")
    if args.sampled:
        stored = WINDOW_ROWS * args.sampled
        sampled = run_cost(rows[0].tolist(), args.runs, stored, args.sampled)[:-1]
        print(f"run_once on {WINDOW_ROWS:,} rows, 1 record in {args.sampled} with inputs "
              f"({stored:,} stored): CPU s {[round(c, 3) for c in sampled]}")  # fmt: skip
    live = beside_gateway(oip_body(rows[:1]), args.seconds)
    print(f"beside the gateway (64 callers, monitor interval {DEMO_INTERVAL_S} s): {live}")
    results = {"run_cpu_s": costs[:-1], "unchanged_run_cpu_s": costs[-1], "beside_gateway": live}
    if args.stored:
        results["stored"] = {"records": args.stored, "run_cpu_s": crowded[0]}
    if args.sampled:
        results["sampled"] = {"one_in": args.sampled, "run_cpu_s": sampled}
    harness.write_results("monitor_run", results)


if __name__ == "__main__":
    main()
