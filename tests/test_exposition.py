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


async def test_a_read_that_failed_is_not_handed_to_the_callers_waiting_for_it():
    """A read can fail (a worker's metric file going away as it restarts). Callers that arrived
    while it waited for the budget were handed what the read before it gave, as if it were new
    (or None, where there was none). Each now gets a read that succeeded and began after it
    arrived."""
    attempts = []

    def read() -> int:
        attempts.append(len(attempts))
        if len(attempts) == 11:
            raise FileNotFoundError("a worker's metric file went away")
        return len(attempts)

    recent = RecentRead(read, reads_per_s=10.0)
    assert [await recent() for _ in range(10)] == list(range(1, 11))  # the budget's burst
    failing = asyncio.create_task(recent())  # waits for the budget, then its read fails
    await asyncio.sleep(0.02)
    waiting = asyncio.gather(*(recent() for _ in range(5)))  # arrived before it began
    try:
        await failing
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("the read's failure reaches the caller whose read it was")
    assert set(await waiting) == {12}  # a good read after the failed one, shared
