"""The analysis thread, and the monitor's session while it keeps up, yield the CPU to serving
(service/monitor/priority.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import threadpoolctl

from service.monitor.priority import (
    CAUGHT_UP_S,
    LATE_MARGIN_S,
    NICENESS,
    SessionShare,
    background_executor,
)
from tests.helpers import AUTOGROUPS_ON, Clock


@pytest.mark.skipif(sys.platform != "linux", reason="threads have their own nice value on Linux")
def test_the_analysis_thread_is_nicer_than_the_rest_of_the_process() -> None:
    process = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    executor = background_executor()
    try:
        thread = executor.submit(threading.get_native_id).result()
        assert os.getpriority(os.PRIO_PROCESS, thread) == min(19, process + NICENESS)
        # the process's other threads are untouched
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == process
        # work runs there, one job at a time
        assert executor.submit(threading.get_native_id).result() == thread
    finally:
        executor.shutdown()


def test_the_numeric_libraries_compute_on_one_thread_once_the_executor_is_made() -> None:
    """OpenBLAS's pool threads spin between pieces of work: half of a run's CPU (priority.py)."""
    import scipy.stats  # noqa: F401  (the monitor's libraries: scipy brings its own OpenBLAS)

    with threadpoolctl.threadpool_limits(limits=2):  # as the test found them, afterwards
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 2 for pool in blas), blas
        background_executor().shutdown()
        pools = threadpoolctl.threadpool_info()
        assert all(pool["num_threads"] == 1 for pool in pools), pools


def share_with(set_niceness) -> tuple[SessionShare, Clock, list[int]]:
    clock, exported = Clock(), []
    share = SessionShare(10, 0.2, set_niceness, exported.append, clock)
    return share, clock, exported


def test_the_session_yields_while_records_come_on_time_and_takes_its_share_while_they_wait() -> (
    None
):
    applied: list[int] = []
    share, clock, exported = share_with(applied.append)
    share.start()
    assert applied == [10] and share.current == 10
    late = 0.2 + LATE_MARGIN_S + 0.1
    share.records_arrived(oldest_at=100.0, now=100.3)  # on time: nothing to change
    share.records_arrived(oldest_at=100.0, now=100.0 + late)
    assert applied == [10, 0] and share.current == 0
    # on time again, but not for long enough: it keeps its full share
    for _ in range(4):
        clock.now += CAUGHT_UP_S / 5
        share.records_arrived(oldest_at=200.0, now=200.1)
    assert share.current == 0
    share.records_arrived(oldest_at=200.0, now=200.0 + late)  # late again: the wait starts over
    clock.now += CAUGHT_UP_S / 2
    share.records_arrived(oldest_at=300.0, now=300.1)
    clock.now += CAUGHT_UP_S / 2
    share.records_arrived(oldest_at=300.0, now=300.1)
    assert share.current == 0
    clock.now += CAUGHT_UP_S / 2
    share.records_arrived(oldest_at=300.0, now=300.1)
    assert applied == [10, 0, 10] and exported == applied
    share.hurry()  # a caller waits (labels, rewards): the same as records that wait
    assert applied == [10, 0, 10, 0]


def test_a_refused_change_is_tried_again_with_the_next_batch() -> None:
    """Linux refuses an unprivileged change within 0.1 s of another session's (EAGAIN)."""
    refusals = [BlockingIOError(11, "Resource temporarily unavailable")]
    applied: list[int] = []

    def set_niceness(niceness: int) -> None:
        if refusals:
            raise refusals.pop()
        applied.append(niceness)

    share, _, exported = share_with(set_niceness)
    share.start()
    assert share.current is None and applied == [] and exported == []
    share.records_arrived(oldest_at=100.0, now=100.1)
    assert share.current == 10 and applied == [10] and exported == [10]


def test_without_a_setter_nothing_is_changed_or_exported() -> None:
    share, _, exported = share_with(None)
    share.start()
    share.records_arrived(oldest_at=0.0, now=100.0)
    assert share.current is None and exported == []


SET_AND_READ = (
    "from service.monitor.priority import session_niceness_setter\n"
    "set_niceness = session_niceness_setter()\n"
    "if set_niceness is None:\n"
    "    print('none')\n"
    "else:\n"
    "    set_niceness(7)\n"
    "    print(open('/proc/self/autogroup').read().split()[-1])\n"
)


@pytest.mark.parametrize("own_session", [True, False])
def test_only_a_session_leader_with_autogroups_sets_its_sessions_niceness(own_session) -> None:
    """A monitor inside another program's session (this test's, here) must not make that whole
    session nicer; BentoML's workers lead their own sessions."""
    answer = subprocess.run(
        [sys.executable, "-c", SET_AND_READ],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.strip()
    assert answer == ("7" if own_session and AUTOGROUPS_ON else "none")
