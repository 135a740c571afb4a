"""Routing benchmark: the cost of one routing decision, and what a canary with a shadow costs.

Run: ``.venv/bin/python bench/routing.py`` (needs ``wrk``).

Part 1: ``EndpointTable.route`` in microseconds per call (keyed, unkeyed, with a 10% shadow), timed
in-process. Part 2: gateway throughput for 1-row requests at concurrency 64, each with a random
``x-user-id``, side by side in one run: (a) one variant; (b) a 90/10 stable/candidate split plus a
shadow mirroring 10% of requests. Target: (b) at least 0.85x (a). Results go to
bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import timeit
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
from service import registry  # noqa: E402
from service.launch import running_server  # noqa: E402
from traffic.table import EndpointTable, RoutingPolicy, VariantSpec  # noqa: E402

CANARY = {
    "routing": {"key": {"header": "x-user-id"}},
    "variants": [
        {"name": "stable", "model": "cancer:v1", "weight": 90},
        {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
        {"name": "shadow", "model": "cancer:v3", "role": "shadow", "mirror": 0.1},
    ],
}
SINGLE = {
    "routing": {"key": {"header": "x-user-id"}},
    "variants": [{"name": "stable", "model": "cancer:v1"}],
}


def decision_cost() -> list[dict]:
    table = EndpointTable(
        "cancer",
        (
            VariantSpec("stable", "cancer:v1", "stable", 90),
            VariantSpec("candidate", "cancer:v2", "candidate", 10),
            VariantSpec("shadow", "cancer:v3", "shadow", 0, 0.1),
        ),
        RoutingPolicy(key_header="x-user-id"),
    )
    keys = [f"user-{random.randrange(10**8)}" for _ in range(100_000)]
    results = []
    cases = {
        "keyed (hash + bucket owner)": lambda: [table.route(k) for k in keys],
        "unkeyed (weighted random)": lambda: [table.route() for _ in keys],
        "pinned": lambda: [table.route(pin_variant="candidate") for _ in keys],
    }
    for name, run in cases.items():
        best = min(timeit.repeat(run, number=1, repeat=5))
        results.append({"case": name, "us_per_decision": best / len(keys) * 1e6})
        print(json.dumps(results[-1]), flush=True)
    return results


def throughput(features, seconds: int) -> list[dict]:
    body = body_for(features[:1])
    results = []
    for name, endpoint in (("single variant", SINGLE), ("90/10 split + 10% shadow", CANARY)):
        config = gateway_config(
            HOME / f"{len(results)}.yaml",
            "cancer",
            "",
            {"enabled": True},
            endpoints={"cancer": endpoint},
        )
        with running_server(config, log_path=HOME / f"routing-{len(results)}.log") as url:
            wrk(url + "/predict/cancer", body, 64, 2, key_header="x-user-id")
            result = wrk(url + "/predict/cancer", body, 64, seconds, key_header="x-user-id")
        results.append({"system": name, "rows": 1, "concurrency": 64, **result})
        print(json.dumps(results[-1]), flush=True)
    ratio = results[1]["rps"] / results[0]["rps"]
    print(f"canary+shadow / single = {ratio:.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    features = register_demo_models()
    v1 = registry.model_dir("cancer:v1") / "model.onnx"
    reference = HOME / "models" / "cancer-reference.csv"
    registry.add_model(v1, "cancer", reference, version="v3")
    write_results(
        "routing", {"decisions": decision_cost(), "throughput": throughput(features, args.seconds)}
    )


if __name__ == "__main__":
    main()
