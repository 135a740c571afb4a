"""The demo as users start it, against the bare app: what a comparison "against the demo" sees.

Run: ``.venv/bin/python bench/demo.py [--tree DIR] [--warm-up 40] [--seconds 10] [--runs 3]``.
``gateway demo --serve-only`` in a fresh home (its gateway.yaml: ``cancer`` split 90/10 between
the logistic regression and the MLP, every request recorded, the monitor's runs every 5 s), 64
closed-loop callers of 1-row OIP JSON to ``cancer`` for ``--warm-up`` seconds (the monitor's
windows fill and its first runs pass), then ``--runs`` measured runs; then the demo stops and the
bare app (bench/peers.py) gets the same runs. ``--tree``: serve another checkout of the project
(an older commit, with this virtual environment) to compare revisions. Results go to
bench/results/demo.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import register_demo_models, write_results  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.peers import bare_app  # noqa: E402
from bench.serving import oip_body  # noqa: E402
from service import registry  # noqa: E402
from service.launch import free_port, stop, wait_ready  # noqa: E402
from service.model_card import MODEL_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CALLERS = 64


def runs(url: str, body: bytes, count: int, seconds: float) -> list[dict]:
    infer = f"{url}/v2/models/cancer/infer"
    results = [closed_loop(infer, body, CALLERS, seconds) for _ in range(count)]
    for result in results:
        print(f"{url}: {round(result['goodput'])} 200s/s, {result['answers']}", flush=True)
    return [
        {"goodput": round(r["goodput"]), "p99_ms": r["ok_p99_ms"], "answers": r["answers"]}
        for r in results
    ]


def demo_runs(tree: Path, body: bytes, args: argparse.Namespace) -> list[dict]:
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
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
            closed_loop(f"{url}/v2/models/cancer/infer", body, CALLERS, args.warm_up)
            return runs(url, body, args.runs, args.seconds)
        finally:
            stop(demo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--warm-up", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    body = oip_body(register_demo_models()[:1])
    demo = demo_runs(args.tree.resolve(), body, args)
    with bare_app(registry.model_dir("cancer:v1") / MODEL_FILE) as url:
        closed_loop(f"{url}/v2/models/cancer/infer", body, CALLERS, 3.0)
        bare = runs(url, body, args.runs, args.seconds)
    write_results("demo", {"tree": str(args.tree), "demo": demo, "bare": bare})


if __name__ == "__main__":
    main()
