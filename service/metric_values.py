"""Metric values kept in the worker's memory and written to its multiprocess file in the background.

prometheus_client's multiprocess mode writes a value's file on every update: a lock, a process-id
check and an mmap write, about 1 us for a counter and 2 for a histogram observation, and a
prediction makes a dozen of them. ``WorkerValue`` makes an update what it is in single-process mode
(an addition under a lock, about a third of that) and a thread writes the values that changed to
the same files every ``FLUSH_S``; ``flush`` writes them at once, which /metrics does before it reads
the files (service/exposition.py). So the exposition is unchanged: the scraped worker's own series
are current, another worker's are at most ``FLUSH_S`` old, and a worker killed with SIGKILL loses at
most its last ``FLUSH_S`` of counts (metrics, never acknowledged data).

``install`` switches prometheus_client to it; only metrics created afterwards use it, so it runs
when a server process starts, before the gateway's and monitor's metrics are made. It also lets go
of the "live" gauges of workers that died (``forget_dead_processes``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from pathlib import Path

from prometheus_client import multiprocess, values

FLUSH_S = 0.25
"""How often changed values are written to this process's multiprocess files."""

_file_value = values.MutexValue
"""prometheus_client's own file-backed value class (set by ``install``): the files, their format
and the process's one handle on each stay the library's."""

_values: list[WorkerValue] = []
_values_lock = threading.Lock()


class WorkerValue(values.MutexValue):
    """A metric value updated in memory and written to its multiprocess file by ``flush``."""

    _multiprocess = True

    def __init__(self, *args, multiprocess_mode: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._file = _file_value(*args, multiprocess_mode=multiprocess_mode, **kwargs)
        self._value = self._file.get()
        self._timestamp: float | None = None
        self._written: tuple[float, float | None] = (self._value, None)
        with _values_lock:
            _values.append(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        """Set the value; ``timestamp`` is what the "mostrecent" gauge modes compare."""
        with self._lock:
            self._value, self._timestamp = value, timestamp

    def write(self) -> None:
        """Write the value to the file if it, or its timestamp, changed since the last write (a
        "mostrecent" gauge set to 0 is shown only once its timestamp is written)."""
        with self._lock:
            current = self._value, self._timestamp
        if current != self._written or current[0] != current[0]:  # NaN never equals itself
            self._file.set(*current)
            self._written = current


def flush() -> None:
    """Write every value of this process that changed to its multiprocess file."""
    with _values_lock:
        pending = list(_values)
    for value in pending:
        value.write()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_S)
        flush()


def forget_dead_processes(directory: str) -> None:
    """Remove the files of the "live" gauges of every process in ``directory`` that is gone.
    A worker killed by a signal or out of memory never marks itself
    dead, and the server's arbiter starts another in its place: the dead one's last values
    stayed in every live sum and minimum for as long as the server ran (its requests in flight,
    and a routing version that made the replica look behind for good)."""
    gone = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            gone.add(int(pid))
    for pid in gone:
        multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that id now
        return True
    return True


def install() -> None:
    """Make metrics created from now on ``WorkerValue``s, when in multiprocess mode (after
    letting go of the live gauges of the workers that died)."""
    global _file_value
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ or values.ValueClass is WorkerValue:
        return
    forget_dead_processes(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # the library's class when it was imported in multiprocess mode (metrics made before share
    # its files), a new one otherwise
    in_files = getattr(values.ValueClass, "_multiprocess", False)
    _file_value = values.ValueClass if in_files else values.MultiProcessValue()
    values.ValueClass = WorkerValue
    threading.Thread(target=_flush_forever, name="metrics flush", daemon=True).start()
    atexit.register(flush)
