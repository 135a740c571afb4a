"""A closed-loop HTTP load generator (aiohttp): ``concurrency`` connections, each sending its next
request as soon as it has its answer, for ``seconds``. It counts answers by status, the latency of
the 200s and the 429s that carried ``Retry-After``, and connection errors, as a client on the same
box sees them (the issue's measurements were taken this way)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import numpy as np


async def _closed_loop(
    url: str, body: bytes, headers: dict, concurrency: int, seconds: float, warm_up_s: float
) -> dict:
    statuses: Counter = Counter()
    ok_latencies: list[float] = []
    retry_after = errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm_until = time.monotonic() + warm_up_s
        stop = warm_until + seconds

        async def connection() -> None:
            nonlocal retry_after, errors
            while (now := time.monotonic()) < stop:
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        status = answer.status
                        has_retry = "Retry-After" in answer.headers
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    if now >= warm_until:
                        errors += 1
                    continue
                if now < warm_until:
                    continue
                statuses[status] += 1
                if status == 200:
                    ok_latencies.append(time.monotonic() - now)
                elif status == 429 and has_retry:
                    retry_after += 1

        await asyncio.gather(*(connection() for _ in range(concurrency)))
    latencies = np.array(ok_latencies) if ok_latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "goodput": statuses[200] / seconds,
        "answers": dict(statuses),
        "ok_p50_ms": float(np.percentile(latencies, 50) * 1000),
        "ok_p99_ms": float(np.percentile(latencies, 99) * 1000),
        "refused_per_s": statuses[429] / seconds,
        "refused_with_retry_after": retry_after,
        "connection_errors": errors,
    }


def closed_loop(
    url: str, body: bytes, concurrency: int, seconds: float, headers=None, warm_up_s: float = 0.0
) -> dict:
    """One closed-loop run after a warm-up that is not counted (by default 1 s, and 1 s more per
    1,000 connections, which take that long to open)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    warm_up_s = warm_up_s or 1.0 + concurrency / 1000
    return asyncio.run(_closed_loop(url, body, headers, concurrency, seconds, warm_up_s))
