"""Overload and several workers, on a gateway with a tiny queue, 2 workers and a slow model."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from service import registry
from service.demo.wide_model import build_wide_model
from service.launch import running_server
from tests.conftest import METRICS_AUTH, write_config

pytestmark = pytest.mark.integration
ROWS = [[0.5] * 30] * 100


@pytest.fixture(scope="module")
def overload_url(demo_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("overload")
    model = build_wide_model(directory / "slow.onnx")
    reference = demo_models["cancer:v1"].reference_path
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


async def metric_sum(session, url: str, prefix: str) -> float:
    async with session.get(f"{url}/metrics", headers=METRICS_AUTH) as answer:
        text = await answer.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


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
