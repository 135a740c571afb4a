"""Named points where a fault-injection test has a process kill itself with SIGKILL, to prove that
what was written before the point survives and is completed after a restart (nothing else can
stop a process between two statements on purpose).

``GATEWAY_CRASH_AT=<point>`` arms one point and ``GATEWAY_CRASH_MARKER=<file>`` makes it fire once:
the file is created just before the kill, and a point whose marker exists does nothing. Unset in
any real deployment, where ``crash_point`` is one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("gateway.crash")
CRASH_ENV = "GATEWAY_CRASH_AT"
MARKER_ENV = "GATEWAY_CRASH_MARKER"


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment arms ``name`` (once, with a marker file)."""
    if os.environ.get(CRASH_ENV) != name:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker is not None:
        if Path(marker).exists():
            return
        Path(marker).write_text(name)
    log.critical("crash point %s reached: killing this process (fault injection)", name)
    os.kill(os.getpid(), signal.SIGKILL)
