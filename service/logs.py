"""Log lines that cannot flood: a failure repeated many times a second is logged once, then once
per interval with how many were left out, and its end is logged when it ends."""

from __future__ import annotations

import logging
import time


class Throttled:
    """One logger's lines for one kind of event, at most one per ``every_s`` seconds."""

    def __init__(self, log: logging.Logger, every_s: float = 30.0) -> None:
        self.log = log
        self.every_s = every_s
        self._last = float("-inf")
        self._left_out = 0
        self._failing = False

    def warning(self, message: str, *args: object, exc_info: bool = False) -> None:
        """Log now if the last line was long enough ago; otherwise count it as left out."""
        self._failing = True
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._left_out += 1
            return
        if self._left_out:
            message += f" ({self._left_out} more like it in the last {now - self._last:.0f} s)"
        self._last, self._left_out = now, 0
        self.log.warning(message, *args, exc_info=exc_info)

    def recovered(self, message: str, *args: object) -> None:
        """Log once that the failure is over (nothing when nothing was failing)."""
        if self._failing:
            self._failing, self._left_out, self._last = False, 0, float("-inf")
            self.log.info(message, *args)
