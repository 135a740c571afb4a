"""Which of several monitor processes leads: the one holding the leader lease in the shared state
store. Every monitor ingests records, labels and rewards; only the leader runs the analysis,
rollouts, experiment readouts, webhook deliveries and pruning, so a decision is taken once.

The leader renews its lease every ``lease_s / 5`` seconds for ``lease_s`` seconds of the
database's clock; standbys try to take it just as often and get it once it lapsed. So a dead
leader is replaced within ``lease_s + lease_s / 5`` seconds (6 s with the default 5 s lease), and
a clean shutdown hands over at once (the lease is released). A leader that cannot renew (the
database unreachable, the process stalled) stops acting on its own before its lease can lapse:
it counts its lease from the moment it sent the renewal, less a margin. Should two ever act at
once all the same, the compare-and-swap on each rollout's revision lets one transition through.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from storage.database import StoreUnavailable
from traffic.store import StateStore

log = logging.getLogger("gateway.monitor")
LEASE = "monitor-leader"
SAFETY = 0.8
"""The share of its lease a leader trusts itself to still hold, counted from the renewal's send
time (covers clock rate differences and the renewal's own latency)."""


def holder_name() -> str:
    """This process, as the lease and the audit log name it: host, pid and a random suffix (a
    restarted process with a reused pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Leadership:
    """This monitor's side of the leader lease."""

    def __init__(
        self,
        store: StateStore,
        lease_s: float,
        on_change: Callable[[bool], None] = lambda leading: None,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_change(leading)``: called (in the renewing thread) when this process becomes
        leader or stops being it."""
        self.store = store
        self.lease_s = lease_s
        self.holder = holder or holder_name()
        self.on_change = on_change
        self.term: int | None = None
        self._clock = clock
        self._trusted_until = float("-inf")
        self._leading = False

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 5

    @property
    def leading(self) -> bool:
        """Whether this process holds the lease now (and may act as leader)."""
        return self.term is not None and self._clock() < self._trusted_until

    @property
    def identity(self) -> str:
        """Holder and term while leading, e.g. ``host:123:ab12cd#4``; the holder alone on a
        standby (an operator's action may reach any monitor). What the audit log records."""
        return f"{self.holder}#{self.term}" if self.leading else self.holder

    def renew(self) -> bool:
        """Take or renew the lease once (blocking: call it off the event loop); whether this
        process leads now. A database that cannot be reached changes nothing here: the lease
        lapses on its own clock."""
        sent = self._clock()
        try:
            term = self.store.hold_lease(LEASE, self.holder, self.lease_s)
        except StoreUnavailable as error:
            log.warning("cannot renew the leader lease: %s", error)
        else:
            self.term = term
            if term is not None:
                self._trusted_until = sent + self.lease_s * SAFETY
        self._tell()
        return self._leading

    def resign(self) -> None:
        """Give the lease up (a clean shutdown) so a standby takes over at once."""
        if self.term is not None:
            try:
                self.store.release_lease(LEASE, self.holder)
            except StoreUnavailable:
                pass  # it lapses by itself
            self.term = None
        self._tell()

    def _tell(self) -> None:
        leading = self.leading
        if leading != self._leading:
            self._leading = leading
            if leading:
                log.warning("this monitor leads now (%s)", self.identity)
            else:
                log.warning("this monitor no longer leads")
            self.on_change(leading)
