"""The monitor's CPU priority: one thread, at a lower priority, for its periodic analysis, and the
whole process yielding to the gateway while it keeps up with the records it is sent.

Drift and quality runs (with their Evidently reports and SHAP attributions) and pruning are
periodic and can wait; taking in records and ticking rollouts cannot. Run ``NICENESS`` above the
rest of the process, the analysis thread yields to the monitor's own event loop (Linux schedules
threads by their own nice value; elsewhere the thread runs at the process's priority).

Against the gateway a thread's niceness does not help where Linux groups CPU time by session
("autogroups", on by default in most distributions' kernels and on this machine): BentoML starts
each worker process in a session of its own, so the monitor's worker competes with the gateway's
as one process, whatever its threads' niceness (measured: the analysis thread, nice 10, took 80-90%
of a core beside a busy gateway). What keeps a run from starving serving is its cost: about 0.1 s
of CPU for a full 10,000-row window (monitors/drift.py, monitors/store.py), and the SHAP attribution
only every ``attribution_interval_s``.

For the same reason the numeric libraries' thread pools are cut to one thread
(``one_numeric_thread``): a run's arithmetic is on vectors of a window's values (a Wasserstein
distance's dot product over 10,000 of them, for each feature), which OpenBLAS splits across its
pool, whose threads then spin waiting for the next piece of work. Measured on two cores: a full
window's run took 0.20 s of CPU with numpy's two OpenBLAS threads and 0.10 s with one, and beside a
gateway under load the spinning thread was the monitor's busiest (up to 32 us of CPU per answer).

The session's own niceness does help: ``SessionShare`` gives the monitor's session
``monitor.niceness`` while nobody waits for it, and its full share back while someone does: records
that arrive late (the gateways' buffers are filling: records would be dropped, rollouts would judge
late), or a gateway posting labels or rewards (its caller waits for them to be stored). The
monitor's work comes in bursts (a batch of 500 records is several milliseconds of CPU), and at equal
weight each burst takes a core from the gateway's event loop, or from its callers, which then stall
every request in flight; at a lower weight the monitor runs mostly in the moments the gateway and
its callers leave a core idle. Measured on two cores beside the demo at 64 callers (BENCHMARKS.md):
the gateway answered about a tenth more at niceness 10 with the monitor's CPU unchanged; at 19 more
still, but the monitor fell behind and records were dropped, which is what the lag check is for.
Only a session's leader changes its session's niceness (a monitor started inside another program's
session leaves it alone), and only where autogroups are on; elsewhere (a container or a systemd
unit, where cgroups rather than sessions share the CPU) give the monitor's unit or container a
smaller CPU weight (systemd ``CPUWeight``, Kubernetes requests).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import threadpoolctl

log = logging.getLogger("gateway.monitor")

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


AUTOGROUP = Path("/proc/self/autogroup")
AUTOGROUPS_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")
LATE_MARGIN_S = 0.5
"""Records are late when the oldest of a batch waited this much longer than the gateway's flush
interval: the monitor is behind, and takes its full share of the CPU."""
CAUGHT_UP_S = 5.0
"""...until records have come on time for this long."""


def autogroups_on() -> bool:
    """Whether Linux shares the CPU between sessions here (and so a session's niceness counts)."""
    try:
        return AUTOGROUPS_ENABLED.read_text().strip() == "1" and AUTOGROUP.is_file()
    except OSError:  # not Linux
        return False


def session_niceness_setter() -> Callable[[int], None] | None:
    """A function that sets this process's session's niceness (0 to 19, both ways: an unprivileged
    process may raise it and lower it back to 0), or None where that is not this process's to do:
    not Linux, autogroups off, or another process leads the session."""
    try:
        leads = os.getsid(0) == os.getpid()
    except AttributeError:  # not Unix
        return None
    if not (leads and autogroups_on()):
        return None

    def set_niceness(niceness: int) -> None:
        AUTOGROUP.write_text(str(niceness))

    return set_niceness


class SessionShare:
    """The monitor process's CPU weight beside the gateway: ``niceness`` while nobody waits for
    it, full (0) while records arrive late or callers wait (see the module's docstring)."""

    def __init__(
        self,
        niceness: int,
        flush_interval_s: float,
        set_niceness: Callable[[int], None] | None,
        on_change: Callable[[int], None] = lambda niceness: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.niceness = niceness
        self.late_s = flush_interval_s + LATE_MARGIN_S
        self._set_niceness = set_niceness
        self._on_change = on_change
        """Told the niceness each time it is set (the monitor exports it)."""
        self._clock = clock
        self.current: int | None = None
        """The session's niceness as last set; None before it is set, or where it cannot be."""
        self._wanted = niceness
        self._on_time_since: float | None = clock()

    def start(self) -> None:
        """Yield from the start: until records come, the monitor has nothing urgent to do."""
        self._settle()

    def records_arrived(self, oldest_at: float, now: float) -> None:
        """A batch arrived at ``now`` (wall clock) whose oldest record was made at ``oldest_at``
        (the gateway's wall clock: a gateway whose clock is well ahead only looks on time)."""
        if now - oldest_at > self.late_s:
            self.hurry()
            return
        if self._on_time_since is None:
            self._on_time_since = self._clock()
        elif self._clock() - self._on_time_since >= CAUGHT_UP_S:
            self._wanted = self.niceness
        self._settle()

    def hurry(self) -> None:
        """Take the full share until records have come on time for ``CAUGHT_UP_S``: they wait, or
        a caller does (labels and rewards are answered once stored; a slow answer fills the
        gateway's budget of ``/feedback`` calls in flight, and its callers get 429s)."""
        self._on_time_since, self._wanted = None, 0
        self._settle()

    def _settle(self) -> None:
        """Set the niceness wanted, if it is not set yet (or setting it failed last time)."""
        if self._wanted != self.current:
            self._apply()

    def _apply(self) -> None:
        if self._set_niceness is None:
            return
        try:
            self._set_niceness(self._wanted)
        except OSError as error:  # EAGAIN: another session's niceness was set within 0.1 s
            log.debug("the monitor's niceness stays %s for now: %s", self.current, error)
            return
        self.current = self._wanted
        self._on_change(self._wanted)
