"""The leader lease between monitors, on both engines: one leader at a time, a standby takes over
once the leader stops renewing, a leader that cannot reach the database stops acting by itself
before its lease can lapse, and a clean shutdown hands over at once."""

from __future__ import annotations

import time

from service.monitor.leadership import LEASE, SAFETY, Leadership
from storage.database import StoreUnavailable
from tests.helpers import Clock
from traffic.store import SQLStateStore


def test_one_leader_and_a_standby_takes_over_when_it_stops_renewing(open_database):
    changes: list[tuple[str, bool]] = []
    monitors = [
        Leadership(
            SQLStateStore(open_database()),
            lease_s=0.5,
            on_change=lambda leading, name=name: changes.append((name, leading)),
            holder=name,
        )
        for name in ("a", "b")
    ]
    a, b = monitors
    assert a.renew() and not b.renew()
    assert a.leading and not b.leading and a.identity == "a#1"
    assert changes == [("a", True)]
    deadline = time.monotonic() + 5
    while not b.renew():  # a is silent (stalled or dead) from now on
        assert time.monotonic() < deadline, "the standby never took over"
        time.sleep(0.05)
    assert b.identity == "b#2" and b.store.lease(LEASE).holder == "b"
    assert time.monotonic() - (deadline - 5) >= 0.5 * SAFETY  # not before a's lease lapsed
    assert not a.renew() and changes[-2:] == [("b", True), ("a", False)]


def test_a_clean_shutdown_hands_over_at_once(open_database):
    a = Leadership(SQLStateStore(open_database()), lease_s=60, holder="a")
    b = Leadership(SQLStateStore(open_database()), lease_s=60, holder="b")
    assert a.renew() and not b.renew()
    a.resign()
    assert not a.leading and b.renew() and b.term == 2


class Unreachable:
    def hold_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        raise StoreUnavailable("the database is unavailable: connection refused")


def test_a_leader_that_cannot_renew_stops_acting_before_its_lease_can_lapse(open_database):
    clock = Clock(100.0)
    leader = Leadership(SQLStateStore(open_database()), lease_s=5, holder="a", clock=clock)
    assert leader.renew()
    leader.store = Unreachable()
    clock.now += 5 * SAFETY - 0.01
    assert leader.renew()  # still within what it trusts
    clock.now += 0.02
    assert not leader.renew() and not leader.leading
