"""The demo's traffic driver: replays held-out rows through the canary and summarises what it saw.

Requests carry a user id (``x-user-id``) so later routing can keep users sticky; one in five goes
through the OIP API instead of the plain one. The summary shows each variant's share of traffic,
its accuracy on the known labels and its latency, as the monitor will later do continuously.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import aiohttp
import pandas as pd

from service.demo.models import LABEL
from service.secrets import Secrets

CONCURRENCY = 8


Answer = tuple[str, object, str]
"""(variant, predicted label, request id)"""


async def _plain(session: aiohttp.ClientSession, url: str, row: dict, user: str) -> Answer:
    async with session.post(url, json={"instances": [row]}, headers={"x-user-id": user}) as answer:
        answer.raise_for_status()
        body = await answer.json()
        return body["variant"], body["predictions"][0]["label"], body["request_id"]


async def _oip(session: aiohttp.ClientSession, url: str, row: dict, user: str) -> Answer:
    request = {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [1, len(row)], "data": list(row.values())}
        ],
        "outputs": [{"name": "label"}],
    }
    async with session.post(url, json=request, headers={"x-user-id": user}) as answer:
        answer.raise_for_status()
        body = await answer.json()
        headers = answer.headers
        request_id = headers["x-gateway-request-id"]
        return headers["x-gateway-variant"], body["outputs"][0]["data"][0], request_id


async def drive(
    base_url: str,
    rows: pd.DataFrame,
    requests: int,
    endpoint: str = "cancer",
    users: range = range(500),
) -> dict:
    """Send ``requests`` keyed requests (one in five over OIP) to ``endpoint``, from ``users``
    (user ids drawn at random), then their labels."""
    stats: dict = defaultdict(lambda: {"n": 0, "correct": 0, "latency": []})
    seen_by_user: dict[str, set] = defaultdict(set)
    truth: list[dict] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    rng = random.Random(0)
    for i in range(requests):
        queue.put_nowait((i, rows.iloc[rng.randrange(len(rows))]))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            i, row = queue.get_nowait()
            features = row.drop(LABEL).astype(float).to_dict()
            user = f"user-{rng.choice(users)}"
            started = time.perf_counter()
            try:
                if i % 5 == 4:
                    variant, label, request_id = await _oip(
                        session, f"{base_url}/v2/models/{endpoint}/infer", features, user
                    )
                else:
                    variant, label, request_id = await _plain(
                        session, f"{base_url}/predict/{endpoint}", features, user
                    )
            except aiohttp.ClientError:
                errors += 1
                continue
            seen_by_user[user].add(variant)
            truth.append({"request_id": request_id, "label": row[LABEL]})
            entry = stats[variant]
            entry["n"] += 1
            entry["correct"] += int(label == row[LABEL])
            entry["latency"].append(time.perf_counter() - started)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        async with session.post(f"{base_url}/feedback", json={"labels": truth}) as answer:
            stored = answer.status == 200
    flipped = sum(1 for variants in seen_by_user.values() if len(variants) > 1)
    return {
        "variants": dict(stats),
        "errors": errors,
        "users": len(seen_by_user),
        "flipped": flipped,
        "labels": len(truth) if stored else 0,
    }


def _print_summary(result: dict, elapsed: float) -> None:
    total = sum(v["n"] for v in result["variants"].values())
    print(
        f"{total} answered in {elapsed:.1f} s ({total / elapsed:.0f} req/s), "
        f"{result['errors']} errors; {result['labels']} ground-truth labels sent to /feedback"
    )
    print(
        f"{result['users']} users (x-user-id); users answered by more than one variant: "
        f"{result['flipped']} (routing is sticky by user)"
    )
    for name, entry in sorted(result["variants"].items()):
        latency = sorted(entry["latency"])
        p99 = latency[int(0.99 * (len(latency) - 1))]
        print(
            f"  {name:10} share {entry['n'] / total:6.1%}  accuracy "
            f"{entry['correct'] / entry['n']:6.1%}  p50 {statistics.median(latency) * 1000:.1f} ms"
            f"  p99 {p99 * 1000:.1f} ms"
        )


def _monitor_run(monitor_url: str, token: str | None) -> None:
    """Ask the monitor for a run now and print what it found per variant."""
    request = urllib.request.Request(
        f"{monitor_url}/runs?reports=true",
        method="POST",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        variants = json.load(answer)["variants"]
    for report in variants:
        if report["endpoint"] != "cancer":
            continue
        drift, quality = report["drift"], report["quality"]
        drifted = drift["drifted_features"] if drift["status"] == "ok" else drift["status"]
        accuracy = quality.get("accuracy")
        shown = f"{accuracy:.1%}" if accuracy is not None else quality["status"]
        print(
            f"  monitor: {report['variant']:10} rows {drift['rows']:5}  drifted features "
            f"{drifted}  accuracy on labels {shown}"
        )


def drive_traffic(
    base_url: str, monitor_url: str, models_dir: Path, requests: int, secrets: Secrets
) -> None:
    """Two phases: in-distribution traffic, then traffic whose inputs drifted in two features."""
    rows = pd.read_csv(models_dir / "cancer-reference.csv")
    drifted = rows.assign(
        mean_radius=rows.mean_radius * 1.5, worst_texture=rows.worst_texture * 1.5
    )
    phases = [
        ("in-distribution traffic (rows like the reference sample)", rows),
        ("drifted traffic (mean_radius and worst_texture x1.5)", drifted),
    ]
    for title, phase_rows in phases:
        print(f"driving {requests} requests through the cancer canary (90/10): {title}...")
        started = time.perf_counter()
        result = asyncio.run(drive(base_url, phase_rows, requests))
        _print_summary(result, time.perf_counter() - started)
        time.sleep(1.0)  # records and labels reach the monitor
        _monitor_run(monitor_url, secrets.monitor_token)
    print(f"reports: {base_url}/reports (admin token)   metrics: {base_url}/metrics")
