"""Waiting out a store that cannot be reached at start (a locked SQLite file, a PostgreSQL server
still starting), the same way in a gateway worker and in a monitor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from service.errors import ConfigError
from service.logs import Throttled

log = logging.getLogger("gateway.storage")
START_DEADLINE_S = 300.0
"""How long a starting process waits for a store it cannot open or read before failing."""
MAX_BACKOFF_S = 5.0
T = TypeVar("T")


def with_retries(what: str, work: Callable[[], T], deadline_s: float = START_DEADLINE_S) -> T:
    """``work()``, tried again with backoff while it fails (a locked database at start), logged
    once a minute at most; the last failure is raised after ``deadline_s``. A config error is
    raised at once."""
    failures = Throttled(log, every_s=60.0)
    deadline, delay = time.monotonic() + deadline_s, 0.1
    while True:
        try:
            result = work()
        except ConfigError:
            raise
        except Exception as error:
            if time.monotonic() + delay > deadline:
                raise
            failures.warning("%s failed (%s); retrying", what, error)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        failures.recovered("%s succeeded", what)
        return result
