"""Background tasks that come back: a task that dies is logged and started again after a backoff,
so one unexpected error cannot silently stop batching, recording, routing updates or rollouts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.supervise")
MAX_BACKOFF_S = 30.0
HEALTHY_S = 60.0
"""A task that ran this long before dying starts again after the shortest backoff."""


async def supervised(
    name: str,
    run: Callable[[], Awaitable[object]],
    on_restart: Callable[[str], None] | None = None,
    first_backoff_s: float = 0.5,
) -> None:
    """Run ``run()`` until cancelled, starting it again (with backoff) whenever it ends."""
    backoff = first_backoff_s
    while True:
        started = time.monotonic()
        try:
            await run()
            log.error("background task %s returned; starting it again in %.1f s", name, backoff)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s died; starting it again in %.1f s", name, backoff)
        if on_restart is not None:
            on_restart(name)
        await asyncio.sleep(backoff)
        ran_long = time.monotonic() - started >= HEALTHY_S
        backoff = first_backoff_s if ran_long else min(backoff * 2, MAX_BACKOFF_S)


def start(
    name: str,
    run: Callable[[], Awaitable[object]],
    on_restart: Callable[[str], None] | None = None,
) -> asyncio.Task:
    """``supervised`` as a task of the running loop."""
    return asyncio.create_task(supervised(name, run, on_restart), name=name)
