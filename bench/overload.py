"""Overload benchmark: goodput and the latency of accepted requests when callers outnumber capacity,
for the gateway and its peers, and what a refusal costs the gateway against a served request.

Run: ``.venv/bin/python bench/overload.py [--seconds 8] [--rounds 3]``. Each system serves the demo's
``cancer:v1`` with one server process: the gateway with its features on (routing, validation,
metrics, recording to a monitor), the bare Starlette + uvicorn + onnxruntime app and MLServer 1.7.1
(bench/peers.py), and a no-op server that answers every request at once without doing anything:
what the client reaches against it is its own ceiling when every call is answered at once (a
server that holds refused callers can pass it: the client then has fewer calls in motion). For
concurrency 64, 256, 1024 and 2048, closed-loop callers (bench/load.py, an aiohttp client on the
same machine) POST a 1-row OIP JSON body for ``--seconds`` after a 1 s
warm-up; systems alternate within each round and the table shows the median of the rounds. Results
go to bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.harness import cpu_seconds, gateway, register_demo_models, write_results  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.peers import bare_app, mlserver, null_server  # noqa: E402
from service import open_files, registry  # noqa: E402
from service.model_card import MODEL_FILE  # noqa: E402

CONCURRENCY = (64, 256, 1024, 2048)


def worker(url: str) -> psutil.Process:
    port = url.rsplit(":", 1)[1]
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "--port" in command and command[command.index("--port") + 1] == port:
            return process.children()[0]
    raise RuntimeError(f"no server on {url}")


def cpu_per_answer(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    """The gateway worker's CPU time per answer over one run, and the run."""
    process = worker(url)
    before = cpu_seconds([process])
    run = closed_loop(f"{url}/v2/models/cancer/infer", body, concurrency, seconds)
    cpu = cpu_seconds([process]) - before
    answers = sum(run["answers"].values())
    return {**run, "cpu_us_per_answer": cpu / max(answers, 1) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    open_files.raise_limit()  # the client's connections, and the servers' it starts
    rows = register_demo_models()
    model = registry.model_dir("cancer:v1") / MODEL_FILE
    tensor = {"name": "X", "datatype": "FP32", "shape": [1, 30], "data": rows[0].tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    systems = {
        "gateway": gateway,
        "bare app": lambda: bare_app(model),
        "MLServer": lambda: mlserver(model),
        "no-op server": null_server,
    }
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for name, start in systems.items():
            with start() as url:
                for concurrency in CONCURRENCY:
                    run = closed_loop(
                        f"{url}/v2/models/cancer/infer", body, concurrency, args.seconds
                    )
                    runs.setdefault((name, concurrency), []).append(run)
                    print(
                        f"round {round_ + 1} {name} c={concurrency}: {json.dumps(run)}", flush=True
                    )
    table = []
    print(
        "\n| system | concurrency | 200s/s (goodput) | vs its own at 64 | p50 / p99 of the 200s (ms) "
        "| 429s/s (all with Retry-After) | other answers | connection errors |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name in systems:
        base = None
        for concurrency in CONCURRENCY:
            runs_here = runs[(name, concurrency)]
            goodput = statistics.median(r["goodput"] for r in runs_here)
            base = base or goodput
            p50 = statistics.median(r["ok_p50_ms"] for r in runs_here)
            p99 = statistics.median(r["ok_p99_ms"] for r in runs_here)
            refused = statistics.median(r["refused_per_s"] for r in runs_here)
            with_retry = all(
                r["refused_with_retry_after"] == r["answers"].get(429, 0) for r in runs_here
            )
            other = max(
                sum(v for k, v in r["answers"].items() if int(k) not in (200, 429))
                for r in runs_here
            )
            errors = max(r["connection_errors"] for r in runs_here)
            table.append(
                {
                    "system": name,
                    "concurrency": concurrency,
                    "goodput": goodput,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "refused_per_s": refused,
                    "other": other,
                    "connection_errors": errors,
                    "runs": runs_here,
                }
            )
            print(
                f"| {name} | {concurrency} | {goodput:,.0f} | {goodput / base:.2f}x | "
                f"{p50:.0f} / {p99:.0f} | {refused:,.0f}{'' if with_retry else ' (some without!)'} "
                f"| {other} | {errors} |"
            )
    with gateway() as url:  # what a served request costs the worker
        served = cpu_per_answer(url, body, 64, args.seconds)
    # One admitted call at a time and no hold: nearly every answer is a refusal, as fast as the
    # callers can send them. The worker CPU left after the few served answers is the refusals'.
    admission = {"min_concurrency": 1, "max_concurrency": 1, "max_refusals_per_s": 1e6}
    with gateway(admission=admission) as url:
        refused = cpu_per_answer(url, body, 256, args.seconds)
    served_us = served["cpu_us_per_answer"]
    n_served = refused["answers"].get(200, 0)
    n_refused = max(refused["answers"].get(429, 0), 1)
    total_us = refused["cpu_us_per_answer"] * sum(refused["answers"].values())
    refusal_us = max(total_us - n_served * served_us, 0) / n_refused
    refused["cpu_us_per_refusal"] = refusal_us
    print(
        f"\nworker CPU: {served_us:.0f} us per served answer; {refusal_us:.0f} us per refusal "
        f"({refusal_us / served_us:.0%} of a served answer; {n_refused:,} refusals, {n_served:,} "
        "served in that run)"
    )
    write_results("overload", {"table": table, "cost": {"served": served, "refused": refused}})


if __name__ == "__main__":
    main()
