"""Recording benchmark: gateway throughput with recording to a live monitor on vs off.

Run: ``.venv/bin/python bench/recording.py`` (needs ``wrk``). Same run, same model (cancer:v1), one
gateway worker, 1-row requests at concurrency 64: (a) no monitor configured; (b) every request
recorded (inputs included) and shipped to a running monitor. Target: (b) at least 0.9x (a). The
monitor's own count of stored records is checked against the requests sent.
Results go to bench/results/recording.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    HOME,
    body_for,
    gateway_config,
    register_demo_models,
    write_results,
    wrk,
)
from service.cli import MONITOR_SERVICE  # noqa: E402
from service.launch import free_port, running_server  # noqa: E402


def stored_records(monitor_url: str) -> int:
    with urllib.request.urlopen(f"{monitor_url}/summary") as answer:
        return sum(v["records"] for v in json.load(answer)["variants"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    body = body_for(register_demo_models()[:1])
    port = free_port()
    monitor = {"url": f"http://127.0.0.1:{port}", "port": port, "buffer_records": 100_000}
    results = []
    for name, extra in (("recording off", {}), ("recording on, live monitor", monitor)):
        config = gateway_config(
            HOME / f"rec-{len(results)}.yaml", "cancer", "cancer:v1", {"enabled": True}
        )
        if extra:
            text = config.read_text() + f"monitor: {json.dumps(extra)}\n"
            config.write_text(text)
        with running_server(config, port=port, service=MONITOR_SERVICE) if extra else _null():
            with running_server(config) as url:
                wrk(url + "/predict/cancer", body, 64, 2)
                result = wrk(url + "/predict/cancer", body, 64, args.seconds)
                if extra:
                    time.sleep(1.0)  # the last batches
                    result["records_stored"] = stored_records(f"http://127.0.0.1:{port}")
        results.append({"system": name, "rows": 1, "concurrency": 64, **result})
        print(json.dumps(results[-1]), flush=True)
    print(f"on / off = {results[1]['rps'] / results[0]['rps']:.2f}")
    write_results("recording", results)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
