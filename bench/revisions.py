"""The gateway at an older revision beside the working tree, in one run: did a change cost speed?

Run: ``.venv/bin/python bench/revisions.py REVISION [--seconds 6] [--rounds 3]``. The revision is
checked out into a temporary git worktree; each side's gateway (every feature on: routing,
validation, metrics, recording to its own running monitor) is started from its own tree with its
own BentoML service names, on the same model store and config. Rounds alternate the two sides;
the table shows the median over rounds of requests/s and p50/p99 for 1-row OIP JSON requests at
concurrency 8 and 64 (aiohttp callers on the same machine, bench/load.py). Results go to
bench/results/revisions.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from bench.harness import _gateway_config, register_demo_models, write_results  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.serving import OIP_PATH, oip_body  # noqa: E402
from service.launch import METRICS_DIR_ENV, free_port, serve_env, stop, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (8, 64)


def service_names(tree: Path) -> tuple[str, str]:
    """(gateway, monitor) BentoML service names as ``tree`` spells them."""
    if (tree / "service" / "gateway" / "bento.py").exists():
        return "service.gateway.bento:GatewayService", "service.monitor.bento:MonitorService"
    return "service.bento:Gateway", "service.monitor_bento:Monitor"


@contextlib.contextmanager
def served(tree: Path, service: str, config: Path, port: int) -> Iterator[str]:
    """``bentoml serve`` of ``service`` run from ``tree`` (its code first on the path)."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    env = {**serve_env(config, port, "127.0.0.1"), "PYTHONPATH": str(tree)}
    command = [str(bentoml_cli), "serve", service, "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        command, cwd=tree, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        stop(process)
        shutil.rmtree(env[METRICS_DIR_ENV], ignore_errors=True)


@contextlib.contextmanager
def gateway_of(tree: Path, directory: Path) -> Iterator[str]:
    config = _gateway_config(directory)
    monitor_port = yaml.safe_load(config.read_text())["monitor"]["port"]
    gateway_service, monitor_service = service_names(tree)
    with (
        served(tree, monitor_service, config, monitor_port),
        served(tree, gateway_service, config, free_port()) as url,
    ):
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = register_demo_models()[:1]
    body = oip_body(rows)
    samples: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        before = Path(scratch) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.revision],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            trees = {args.revision[:10]: before, "working tree": ROOT}
            for round_ in range(args.rounds):
                for name, tree in trees.items():
                    directory = Path(scratch) / f"{round_}-{name.replace(' ', '-')}"
                    directory.mkdir()
                    with gateway_of(tree, directory) as url:
                        target = url + OIP_PATH.format(model="cancer")
                        for concurrency in CONCURRENCY:
                            run = closed_loop(target, body, concurrency, args.seconds)
                            samples.setdefault((name, concurrency), []).append(run)
                            print(name, concurrency, json.dumps(run), flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False
            )
    results = []
    for (name, concurrency), runs in samples.items():
        results.append(
            {
                "tree": name,
                "concurrency": concurrency,
                "requests_per_s": statistics.median(r["goodput"] for r in runs),
                "p50_ms": statistics.median(r["ok_p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["ok_p99_ms"] for r in runs),
            }
        )
    print("| revision | concurrency | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['tree']} | {r['concurrency']} | {r['requests_per_s']:,.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    write_results("revisions", {"revision": args.revision, "cpus": os.cpu_count(), "runs": results})


if __name__ == "__main__":
    main()
