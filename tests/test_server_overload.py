"""Overload: a tiny queue refuses with 429 at once; a spike of callers past capacity keeps the
accepted answers within the SLO while labels and the operators' routes go on; several workers."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter

import aiohttp
import numpy as np
import pandas as pd
import pytest

from service import registry
from service.demo.wide_model import build_wide_model
from service.launch import MONITOR_SERVICE, free_port, running_server
from tests.helpers import (
    ADMIN_AUTH,
    ADMIN_ENV,
    METRICS_AUTH,
    local_monitor,
    metric_sum,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.alone]
ROWS = [[0.5] * 30] * 100


@pytest.fixture(scope="module")
def overload_url(demo_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("overload")
    model = build_wide_model(directory / "slow.onnx")
    reference = directory / "reference.csv"  # the cancer rows, labeled for a regressor
    pd.read_csv(demo_models["cancer:v1"].reference_path).assign(label=0.0).to_csv(
        reference, index=False
    )
    registry.add_model(model, "slow", reference, version="v1")
    config = write_config(
        directory / "gateway.yaml",
        server={"workers": 2},
        batching={"max_batch_size": 100, "max_queue": 2},
        endpoints={"slow": {"variants": [{"name": "only", "model": "slow:v1"}]}},
    )
    with running_server(config, log_path=directory / "server.log") as url:
        yield url


async def call(session, url):
    async with session.post(f"{url}/predict/slow", json={"instances": ROWS}) as answer:
        return answer.status, answer.headers.get("Retry-After"), await answer.read()


async def test_overload_is_refused_with_429_retry_after_and_counted(overload_url):
    async with aiohttp.ClientSession() as session:
        before = await metric_sum(session, overload_url, "gateway_queue_rejections_total")
        results = await asyncio.gather(*(call(session, overload_url) for _ in range(40)))
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 429}, statuses
        rejected = [r for r in results if r[0] == 429]
        assert rejected and statuses.count(200) >= 2
        assert all(retry == "1" for _, retry, _ in rejected)
        assert "overloaded" in json.loads(rejected[0][2])["error"]
        after = await metric_sum(session, overload_url, "gateway_queue_rejections_total")
        assert after - before == len(rejected)
        # Once the burst is over the gateway serves normally again.
        assert (await call(session, overload_url))[0] == 200


async def test_two_workers_answer_and_metrics_add_up(overload_url):
    prefix = 'gateway_requests_total{endpoint="slow",model_version="v1",outcome="ok"'
    async with aiohttp.ClientSession() as session:
        before = await metric_sum(session, overload_url, prefix)
        for _ in range(3):
            results = await asyncio.gather(*(call(session, overload_url) for _ in range(2)))
            assert all(status == 200 for status, _, _ in results)
        after = await metric_sum(session, overload_url, prefix)
    assert after - before == 6


ROW = [14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.08, 0.05, 0.18, 0.06] * 3


async def test_a_spike_past_capacity_keeps_answers_within_the_slo_and_labels_flowing(
    demo_models, tmp_path
):
    """512 callers that retry at once on one worker: every answer is a 200 or a 429 with
    Retry-After, the 200s stay within the SLO, and labels, health, metrics and the admin API
    answer meanwhile. Refusals are held (here up to the default ``admission.max_hold_ms``, at
    50 a second) yet reach callers whose timeout is 5 s (httpx's default) as 429s, not timeouts."""
    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port),
        endpoints={"cancer": {"variants": [{"name": "stable", "model": "cancer:v1"}]}},
        admission={"max_refusals_per_s": 50},
    )
    statuses, retry_after, ok_latencies, errors, side = Counter(), 0, [], 0, []
    refusal_latencies = []
    with (
        running_server(config, port=port, service=MONITOR_SERVICE),
        running_server(config, env=ADMIN_ENV) as url,
    ):
        connector = aiohttp.TCPConnector(limit=600)
        timeout = aiohttp.ClientTimeout(total=4.9)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            stop = time.monotonic() + 5

            async def caller() -> None:
                nonlocal retry_after, errors
                connected = False  # a first call also waits for its connection: not timed
                while time.monotonic() < stop:
                    started = time.monotonic()
                    try:
                        async with session.post(
                            f"{url}/predict/cancer", json={"instances": [ROW]}
                        ) as answer:
                            body = await answer.json()
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        errors += 1
                        continue
                    statuses[answer.status] += 1
                    if answer.status == 200 and connected:
                        ok_latencies.append(time.monotonic() - started)
                        if len(ok_latencies) % 50 == 0:
                            side.append(await labelled(session, url, body["request_id"]))
                    elif "Retry-After" in answer.headers:
                        retry_after += 1
                        refusal_latencies.append(time.monotonic() - started)
                    connected = True

            async def probes() -> None:
                await asyncio.sleep(2)
                for path, headers in (
                    ("/readyz", {}),
                    ("/metrics", METRICS_AUTH),
                    ("/admin/routing", ADMIN_AUTH),
                ):
                    started = time.monotonic()
                    async with session.get(f"{url}{path}", headers=headers) as answer:
                        side.append((path, answer.status, time.monotonic() - started, []))

            # The callers share this process with the whole suite's objects (hundreds of
            # thousands by now): a full collection walks them all, stalling every caller at once
            # for 0.25 s or more, a pause of the client, not the gateway. Frozen, the collector
            # skips them, as the gateway's own workers do (service/gateway/bento.py).
            gc.freeze()
            try:
                await asyncio.gather(probes(), *(caller() for _ in range(512)))
            finally:
                gc.unfreeze()
    assert errors == 0 and set(statuses) <= {200, 429}, (statuses, errors)
    assert statuses[429] > 0 and retry_after == statuses[429], statuses
    assert max(refusal_latencies) > 3, "no refusal was held near max_hold_ms"
    p50, p99 = (float(np.percentile(ok_latencies, q)) for q in (50, 99))
    slowest = max(seconds for _, _, seconds, _ in side)
    print(
        f"spike: {dict(statuses)}, 200s p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms, "
        f"slowest side call {slowest:.2f} s"
    )
    # Timed by 512 callers that share the box's two cores with the server, so their own event
    # loop's delays are in these figures and vary run to run: the bars are what holds with that
    # noise and fails without admission (unguarded, the p50 was 1.25 s and the p99 1.45 s);
    # bench/overload.py measures the SLO itself.
    assert p50 <= 0.1, f"accepted requests' p50 {p50 * 1000:.0f} ms is over the 100 ms SLO"
    assert p99 <= 0.5, f"accepted requests' p99 {p99 * 1000:.0f} ms is over 5x the SLO"
    labels = [s for s in side if s[0] == "/feedback"]
    refused = [label for label in labels if label[1] != 200]
    assert labels and not refused, refused
    retried = [label[3] for label in labels if label[3]]
    print(f"labels: {len(labels)} acknowledged, {len(retried)} after a retry: {retried[:3]}")
    assert all(status == 200 and seconds < 2 for _, status, seconds, _ in side), side


async def labelled(session, url: str, request_id: str) -> tuple[str, int, float, list]:
    """Post a label as a careful client does: a 429 or 503 says nothing was stored and when to
    come back, so it is sent again (up to three times, sooner than asked: the test is short).
    The refusals met on the way are kept for the failure message."""
    started = time.monotonic()
    label = {"request_id": request_id, "label": "benign"}
    refusals = []
    for _ in range(4):
        async with session.post(f"{url}/feedback", json=label) as answer:
            if answer.status not in (429, 503) or "Retry-After" not in answer.headers:
                return "/feedback", answer.status, time.monotonic() - started, refusals
            refusals.append((answer.status, (await answer.json())["error"]))
        await asyncio.sleep(0.2)
    return "/feedback", answer.status, time.monotonic() - started, refusals
