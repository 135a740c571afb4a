"""Recording benchmark: gateway throughput with recording to a live monitor on vs off.

Run: ``.venv/bin/python bench/recording.py`` (needs ``wrk``). Same model (cancer:v1), one gateway
worker each, 1-row requests at concurrency 64: (a) a gateway with no monitor configured; (b) a
gateway recording every request (inputs included) and shipping it to a running monitor. Both
gateways and the monitor run for the whole benchmark and are measured in alternating rounds
(a, b, a, b, ...), so that drift in the machine's speed hits both alike; the figure is the ratio of
the medians. Target: (b) at least 0.9x (a). The monitor's scheduled drift and quality runs are
pushed out of the measurement (``interval_s``): they are analysis, not recording, costed in
bench/drift.py, and in a deployment run where the monitor runs, not on the gateway's cores. The monitor's count of stored records is checked
against the requests sent. Results go to bench/results/recording.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    HOME,
    body_for,
    cpu_seconds,
    gateway_config,
    register_demo_models,
    write_results,
    wrk,
)
from service.launch import (  # noqa: E402
    MONITOR_SERVICE,  # noqa: E402
    free_port,
    running_server,
)

SYSTEMS = ("recording off", "recording on, live monitor")


def server_processes(url: str) -> list[psutil.Process]:
    """The ``bentoml serve`` process listening at ``url`` and all its children."""
    port = url.rsplit(":", 1)[1]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and port in cmdline:
            return [process, *process.children(recursive=True)]
    raise LookupError(f"no server process for {url}")


def stored_records(monitor_url: str) -> int:
    with urllib.request.urlopen(f"{monitor_url}/summary") as answer:
        return sum(v["records"] for v in json.load(answer)["variants"])


def configs(monitor_port: int) -> tuple[Path, Path]:
    """(recording off, recording on) gateway configs for the same model and batching."""
    off, on = (
        gateway_config(HOME / f"rec-{name}.yaml", "cancer", "cancer:v1", {"enabled": True})
        for name in ("off", "on")
    )
    monitor = {
        "url": f"http://127.0.0.1:{monitor_port}",
        "port": monitor_port,
        "buffer_records": 100_000,
        "interval_s": 3600,  # analysis is the monitor's own work, measured in bench/drift.py
    }
    on.write_text(on.read_text() + f"monitor: {json.dumps(monitor)}\n")
    return off, on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="per system")
    args = parser.parse_args()
    body = body_for(register_demo_models()[:1])
    monitor_port = free_port()
    off, on = configs(monitor_port)
    rounds: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    with ExitStack() as servers:
        servers.enter_context(running_server(on, port=monitor_port, service=MONITOR_SERVICE))
        urls = dict(zip(SYSTEMS, (servers.enter_context(running_server(c)) for c in (off, on))))
        monitor = server_processes(f"http://127.0.0.1:{monitor_port}")
        gateways = {name: server_processes(url) for name, url in urls.items()}
        for url in urls.values():
            wrk(url + "/predict/cancer", body, 64, 2)  # warm-up
        for _ in range(args.rounds):
            for name, url in urls.items():
                before = cpu_seconds(gateways[name]), cpu_seconds(monitor)
                result = wrk(url + "/predict/cancer", body, 64, args.seconds)
                gateway_cpu = cpu_seconds(gateways[name]) - before[0]
                monitor_cpu = cpu_seconds(monitor) - before[1]
                requests = result["rps"] * args.seconds
                result["gateway_cpu_us_per_request"] = gateway_cpu / requests * 1e6
                result["monitor_cpu_us_per_request"] = monitor_cpu / requests * 1e6
                rounds[name].append(result)
                print(name, json.dumps(result), flush=True)
        time.sleep(1.0)  # the last batches
        stored = stored_records(f"http://127.0.0.1:{monitor_port}")
        sent = sum(r["rps"] * args.seconds for r in rounds[SYSTEMS[1]])
    results = []
    for name in SYSTEMS:
        median = {
            key: statistics.median(r[key] for r in rounds[name])
            for key in ("rps", "gateway_cpu_us_per_request", "monitor_cpu_us_per_request")
        }
        results.append(
            {"system": name, "rows": 1, "concurrency": 64, **median, "rounds": rounds[name]}
        )
    ratio = results[1]["rps"] / results[0]["rps"]
    results[1].update(records_stored=stored, requests_recorded_at_least=round(sent), ratio=ratio)
    print(
        f"median rps: off {results[0]['rps']:.0f}, on {results[1]['rps']:.0f}; on / off = {ratio:.2f}"
    )
    for result in results:
        print(
            f"{result['system']}: CPU per request, gateway "
            f"{result['gateway_cpu_us_per_request']:.0f} us, monitor "
            f"{result['monitor_cpu_us_per_request']:.0f} us"
        )
    print(f"records stored {stored} for at least {sent:.0f} recorded requests (+ warm-up)")
    write_results("recording", results)


if __name__ == "__main__":
    main()
