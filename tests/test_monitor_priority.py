"""The analysis thread yields the CPU to serving (service/monitor/priority.py)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import threadpoolctl

from service.monitor.priority import NICENESS, background_executor


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
