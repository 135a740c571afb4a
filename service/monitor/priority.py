"""One thread, at a lower CPU priority, for the monitor's periodic analysis.

Drift and quality runs (with their Evidently reports and SHAP attributions) and pruning are
periodic and can wait; taking in records and ticking rollouts cannot. Run ``NICENESS`` above the
rest of the process, the analysis thread yields to the monitor's own event loop (Linux schedules
threads by their own nice value; elsewhere the thread runs at the process's priority).

Against the gateway the niceness does not help where Linux groups CPU time by session
("autogroups", on by default in most distributions' kernels and on this machine): BentoML starts
each worker process in a session of its own, so the monitor's worker competes with the gateway's
as one process, whatever its threads' niceness (measured: the analysis thread, nice 10, took 80-90%
of a core beside a busy gateway). What keeps a run from starving serving is its cost: about 0.1 s
of CPU for a full 10,000-row window (monitors/drift.py, monitors/store.py), and the SHAP attribution
only every ``attribution_interval_s``. Deployments that place both on one machine can also give the
monitor's unit or container a smaller CPU weight (systemd ``CPUWeight``, Kubernetes requests).

For the same reason the numeric libraries' thread pools are cut to one thread
(``one_numeric_thread``): a run's arithmetic is on vectors of a window's values (a Wasserstein
distance's dot product over 10,000 of them, for each feature), which OpenBLAS splits across its
pool, whose threads then spin waiting for the next piece of work. Measured on two cores: a full
window's run took 0.20 s of CPU with numpy's two OpenBLAS threads and 0.10 s with one, and beside a
gateway under load the spinning thread was the monitor's busiest (up to 32 us of CPU per answer).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import threadpoolctl

NICENESS = 10
"""How much nicer than the process the analysis thread is (CFS gives it about a tenth of a core's
share against a busy thread at the process's own priority)."""


def background_executor() -> ThreadPoolExecutor:
    """A one-thread executor whose thread runs ``NICENESS`` below the process's priority, in a
    process whose numeric libraries compute on the calling thread alone."""
    one_numeric_thread()
    return ThreadPoolExecutor(1, thread_name_prefix="analysis", initializer=lower_priority)


def lower_priority() -> None:
    """Make the calling thread (alone, on Linux) ``NICENESS`` nicer."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(19, current + NICENESS))


def one_numeric_thread() -> None:
    """Limit the BLAS and OpenMP thread pools of the libraries loaded so far (numpy's and scipy's
    OpenBLAS, among them) to one thread, for the whole process: OpenBLAS's count is per library,
    not per thread. Nothing in the monitor multiplies matrices big enough to gain from more."""
    threadpoolctl.threadpool_limits(limits=1)
