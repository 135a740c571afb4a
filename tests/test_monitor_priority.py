"""The analysis thread yields the CPU to serving (service/monitor/priority.py)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

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
