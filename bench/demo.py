"""The demo as users start it, against the bare app: what a comparison "against the demo" sees.

Run: ``.venv/bin/python bench/demo.py [--home DIR] [--tree DIR] [--warm-up 40] [--seconds 10]
[--runs 3] [--callers 64 ...] [--client aiohttp|wrk]``. ``gateway demo --serve-only`` in a fresh
home (its gateway.yaml: ``cancer`` split 90/10 between the logistic regression and the MLP, every
request recorded, the monitor's runs every 5 s), closed-loop callers of 1-row OIP JSON to ``cancer``
(as many as the first ``--callers``) for ``--warm-up`` seconds (the monitor's windows fill and its
first runs pass), then ``--runs`` measured runs at each number of ``--callers`` (64; with 1024 too,
the overload issue's spike); then the demo stops and the bare app (bench/peers.py) gets the same
runs, and then the no-op server (bench/peers.py), which answers without doing anything: what the
client reaches against it is the client's own ceiling at each number of callers, on this machine.
Each run also reports the CPU each server process and the client took per answer (microseconds),
a figure this noisy machine moves less than the rate. ``--client wrk`` drives the
same runs with wrk instead of the aiohttp callers (the issues' client), to tell what the server
loses at 1,024 callers from what a Python client on the same two cores does. ``--home``: serve a
copy of a home that ``make demo`` has run in (``.gateway-home``: its labels, rollouts and records,
what a user's demo holds) instead of a fresh one. ``--tree``: serve another checkout of the project
(an older commit, with this virtual environment) to compare revisions. Results go to
bench/results/demo.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    cpu_seconds,
    register_demo_models,
    worker_roles,
    write_results,
    wrk,
)
from bench.load import closed_loop  # noqa: E402
from bench.peers import bare_app, null_server  # noqa: E402
from bench.serving import oip_body  # noqa: E402
from service import open_files, registry  # noqa: E402
from service.launch import free_port, stop, wait_ready  # noqa: E402
from service.model_card import MODEL_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _server_processes(parent: psutil.Process) -> dict[str, psutil.Process]:
    """The busy server processes under ``parent``, by role: the gateway's and the monitor's
    workers, or the bare app's one process."""
    children = parent.children(recursive=True)
    bare = [p for p in children if "uvicorn" in " ".join(p.cmdline())]
    return {**worker_roles(children), **({"bare app": bare[0]} if bare else {})}


WRK_TIMEOUT_S = 10
"""wrk's answer timeout here: past the gateway's longest hold of a refusal (4 s), so that a held
429 counts as an answer, as with the aiohttp client, not as a timeout (wrk's default is 2 s)."""


def one_run(client: str, url: str, body: bytes, callers: int, seconds: float) -> dict:
    """One closed-loop run of ``client``: 200s/s, answers by status, a p99 (ms) and the client's
    CPU seconds. aiohttp (bench/load.py) is the overload issue's client, and its p99 is the 200s'.
    wrk, in C, takes 22-34 us per answer at 64 and 1,024 connections alike, where the aiohttp
    client's cost doubles (BENCHMARKS.md); it does not tell a 200's latency from a 429's, so
    its p99 is of every answer, held refusals included."""
    if client == "aiohttp":
        me = psutil.Process()
        before = cpu_seconds([me])
        run = closed_loop(url, body, callers, seconds)
        return {
            "goodput": run["goodput"],
            "answers": run["answers"],
            "p99_ms": run["ok_p99_ms"],
            "client_cpu_s": cpu_seconds([me]) - before,
        }
    wrk(url, body, callers, 2, timeout_s=WRK_TIMEOUT_S)  # opens the connections, not counted
    run = wrk(url, body, callers, seconds, timeout_s=WRK_TIMEOUT_S)
    answers = round(run["rps"] * seconds)
    return {
        "goodput": run["rps"] - run["non_2xx"] / seconds,
        "answers": {200: answers - run["non_2xx"], "not 2xx": run["non_2xx"]},
        "p99_ms": run["p99"] * 1000,
        "client_cpu_s": run["client_cpu"] * seconds,
        "socket_errors": run["socket_errors"],
    }


def runs(url: str, parent: psutil.Process, body: bytes, args: argparse.Namespace) -> list[dict]:
    """``--runs`` closed-loop runs at each ``--callers``: 200s/s, p99, answers, and the CPU per
    answer of each server process under ``parent`` and of the client."""
    infer = f"{url}/v2/models/cancer/infer"
    processes = _server_processes(parent)
    results = []
    for callers in [c for c in args.callers for _ in range(args.runs)]:
        before = {role: cpu_seconds([process]) for role, process in processes.items()}
        run = one_run(args.client, infer, body, callers, args.seconds)
        answers = max(sum(run["answers"].values()), 1)
        cpu_s = {role: cpu_seconds([p]) - before[role] for role, p in processes.items()}
        cpu_s["client"] = run.pop("client_cpu_s")
        cpu_us = {role: round(seconds / answers * 1e6) for role, seconds in cpu_s.items()}
        print(f"{url}, {callers} {args.client} callers: {round(run['goodput'])} 200s/s, p99 "
              f"{run['p99_ms']:.0f} ms, {run['answers']}, CPU us per answer {cpu_us}",
              flush=True)  # fmt: skip
        results.append({"callers": callers, **run, "cpu_us_per_answer": cpu_us})
    return results


def demo_runs(tree: Path, body: bytes, args: argparse.Namespace) -> list[dict]:
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        if args.home:
            shutil.copytree(args.home, home, dirs_exist_ok=True)
        command = [sys.executable, "-m", "service.cli", "demo", "--home", home]
        demo = subprocess.Popen(
            [*command, "--port", str(port), "--serve-only"],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, demo)
            closed_loop(f"{url}/v2/models/cancer/infer", body, args.callers[0], args.warm_up)
            return runs(url, psutil.Process(demo.pid), body, args)
        finally:
            stop(demo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="serve a copy of this demo home")
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--warm-up", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3, help="runs at each number of callers")
    parser.add_argument("--callers", type=int, nargs="+", default=[64])
    parser.add_argument("--client", choices=("aiohttp", "wrk"), default="aiohttp")
    args = parser.parse_args()
    open_files.raise_limit()  # the client's connections, and the servers' it starts
    body = oip_body(register_demo_models()[:1])
    demo = demo_runs(args.tree.resolve(), body, args)
    with bare_app(registry.model_dir("cancer:v1") / MODEL_FILE) as url:
        closed_loop(f"{url}/v2/models/cancer/infer", body, args.callers[0], 3.0)
        bare = runs(url, psutil.Process(), body, args)
    with null_server() as url:
        ceiling = runs(url, psutil.Process(), body, args)
    home = str(args.home) if args.home else None
    write_results(
        "demo",
        {
            "tree": str(args.tree),
            "home": home,
            "demo": demo,
            "bare": bare,
            "client_ceiling": ceiling,
        },
    )


if __name__ == "__main__":
    main()
