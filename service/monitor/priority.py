"""One thread, at a lower CPU priority, for the monitor's periodic analysis.

Drift and quality runs (with their Evidently reports and SHAP attributions) and pruning are
periodic and can wait; answering predictions and taking in records cannot. A run
over a full window takes a core for seconds (measured on the demo, 2 cores: about a core for 5 to
10 s every 30 s, during which the gateway beside it served up to 40% fewer predictions). Run
``NICENESS`` above the rest of the process, it gets the CPU that serving leaves (Linux schedules
threads by their own nice value; elsewhere the thread runs at the process's priority).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

NICENESS = 10
"""How much nicer than the process the analysis thread is (CFS gives it about a tenth of a core's
share against a busy thread at the process's own priority)."""


def background_executor() -> ThreadPoolExecutor:
    """A one-thread executor whose thread runs ``NICENESS`` below the process's priority."""
    return ThreadPoolExecutor(1, thread_name_prefix="analysis", initializer=lower_priority)


def lower_priority() -> None:
    """Make the calling thread (alone, on Linux) ``NICENESS`` nicer."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(19, current + NICENESS))
