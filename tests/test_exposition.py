"""Reading the metrics back for routes anyone may call: never older than the call, and never more
often than the budget, however many callers ask."""

from __future__ import annotations

import asyncio
import itertools
import time

from service.exposition import RecentRead


async def test_a_caller_always_gets_a_read_that_began_after_it_asked():
    """Sequential callers each get a read of their own: within the budget at once, beyond it
    after waiting for the next one allowed (never a stale answer)."""
    counter = itertools.count()
    recent = RecentRead(lambda: next(counter), reads_per_s=20.0)
    started = time.monotonic()
    answers = [await recent() for _ in range(30)]
    assert answers == list(range(30))
    assert time.monotonic() - started >= 10 / 20.0 * 0.9  # the ten reads past the burst


async def test_callers_asking_together_share_reads_within_the_budget():
    seen = []

    def read() -> int:
        time.sleep(0.02)  # reading the metric files takes a while
        seen.append(len(seen))
        return seen[-1]

    recent = RecentRead(read, reads_per_s=10.0)
    first = asyncio.create_task(recent())
    await asyncio.sleep(0.005)  # the first read has begun
    rest = await asyncio.gather(*(recent() for _ in range(200)))
    assert await first == 0
    assert set(rest) == {1} and len(seen) == 2  # all arrived before the second read began
