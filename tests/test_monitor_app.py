"""The monitor's periodic jobs (service/monitor/app.py ``_every``): a job whose runs grow long is
run less often instead of taking a core; the leader lease keeps its interval whatever it takes."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from service.monitor.app import BUSY_SHARE, _every


async def _starts(seconds: float, **options) -> list[float]:
    """When a job that takes 50 ms, due every 10 ms, started its runs within ``seconds``."""
    starts: list[float] = []

    def costly() -> None:
        starts.append(time.monotonic())
        time.sleep(0.05)

    job = asyncio.create_task(_every(0.01, costly, "costly job", **options))
    await asyncio.sleep(seconds)
    job.cancel()
    return starts


async def test_a_job_whose_runs_take_long_runs_at_most_its_busy_share_of_the_time():
    """An experiment's readout reads its whole window, which grows for weeks: at its interval
    it came to take a core. At 50 ms a run and a quarter's share, runs start 0.2 s apart, not
    60 ms (20 runs in 1.2 s)."""
    spacing = 0.05 / BUSY_SHARE
    starts = await _starts(1.2)
    assert 2 <= len(starts) <= 1.2 / spacing + 1, starts
    assert np.diff(starts).min() >= spacing - 0.01


async def test_without_a_busy_share_a_job_keeps_its_interval():
    """The leader lease is renewed on time whatever a renewal takes."""
    starts = await _starts(1.2, busy_share=None)
    assert len(starts) >= 10
    assert np.diff(starts).max() < 0.2
