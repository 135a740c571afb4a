"""The admission controller (pure, a fake clock): it shrinks when admitted predictions take longer
than the budget, grows while it holds traffic back and they are fast (past its start, only while
they barely queue), holds refusals longer the more callers it refuses, and says how long the
backlog takes to drain."""

from __future__ import annotations

import pytest

from service.gateway.admission import (
    GROW_BELOW,
    GROW_BELOW_PAST_START,
    START_LIMIT,
    WINDOW_S,
    Admission,
)
from tests.helpers import Clock

SERVICE_S = 0.002
"""What the model itself takes: the one call of each window that did not queue."""


def window(
    admission: Admission, clock: Clock, latency_s: float, calls: int = 20, service_s=SERVICE_S
) -> None:
    """``calls`` predictions (all admitted: fewer than the limit), one finishing after
    ``service_s`` and the others after ``latency_s`` (they queued), then the window closes."""
    for _ in range(calls):
        assert admission.admit()
    admission.done(service_s)
    for _ in range(calls - 2):
        admission.done(latency_s)
    clock.now += WINDOW_S * 1.01
    admission.done(latency_s)  # closes the window


def refused_window(admission: Admission, clock: Clock, latency_s: float) -> None:
    """A window in which every slot is taken and one more caller is refused."""
    while admission.admit():
        pass
    admission.in_flight = 0
    window(admission, clock, latency_s)


def test_it_admits_up_to_the_limit_and_remembers_refusing():
    clock = Clock()
    admission = Admission(0.03, 4, 100, 200, 5.0, clock)
    admitted = sum(admission.admit() for _ in range(80))
    assert admitted == 64 and admission.in_flight == 64 and admission.shedding
    clock.now += 2
    assert not admission.shedding  # optional work comes back a second after the last refusal


def test_a_released_slot_is_free_again_and_teaches_nothing():
    clock = Clock()
    admission = Admission(0.03, 4, 100, 200, 5.0, clock)
    while admission.admit():
        pass
    limit = admission.limit
    admission.release()
    assert admission.in_flight == 63 and admission.admit() and not admission.admit()
    assert admission.limit == limit and admission._latencies == []


def test_slow_windows_shrink_the_limit_and_fast_limited_ones_grow_it():
    clock = Clock()
    limits = []
    admission = Admission(0.03, 4, 1000, 200, 5.0, clock, on_limit=limits.append)
    window(admission, clock, latency_s=0.09)  # three times the budget
    assert admission.limit == pytest.approx(32)  # halved at most per window
    window(admission, clock, latency_s=0.04)
    assert admission.limit == pytest.approx(32 * 0.03 / 0.04)
    before = admission.limit
    window(admission, clock, latency_s=0.005)  # fast, but nobody was refused: no reason to grow
    assert admission.limit == before
    refused_window(admission, clock, latency_s=0.005)  # fast and refusing: grow
    assert admission.limit > before and limits[-1] == admission.limit
    for _ in range(50):
        window(admission, clock, latency_s=1.0, calls=4)
    assert admission.limit == 4  # never below the floor


def test_past_its_start_the_limit_grows_only_while_admitted_calls_barely_queue():
    budget_s = 0.03
    between = (GROW_BELOW_PAST_START + GROW_BELOW) / 2 * budget_s  # well within, but queueing
    clock = Clock()
    admission = Admission(budget_s, 4, 1000, 200, 5.0, clock)
    assert admission.limit == admission.start == START_LIMIT
    for _ in range(10):
        refused_window(admission, clock, latency_s=between)
    assert admission.limit == START_LIMIT  # callers refused, yet more in flight would only wait
    refused_window(admission, clock, latency_s=0.9 * GROW_BELOW_PAST_START * budget_s)
    assert admission.limit > START_LIMIT  # barely queueing: room for more

    window(admission, clock, latency_s=2 * budget_s)  # a slow moment shrinks it below its start
    shrunk = admission.limit
    assert shrunk < START_LIMIT
    refused_window(admission, clock, latency_s=between)
    assert admission.limit > shrunk  # below its start the same calls let it grow back


def test_a_model_slower_than_the_budget_is_served_at_its_own_pace_not_refused():
    clock = Clock()
    admission = Admission(0.03, 4, 1000, 200, 5.0, clock)
    for _ in range(20):  # every call takes 50 ms without queueing: the model, not a queue
        window(admission, clock, latency_s=0.05, service_s=0.05)
    assert admission.limit == 64 and admission.service_s == pytest.approx(0.05)
    for _ in range(5):  # now calls queue behind each other: three times the model's own time
        window(admission, clock, latency_s=0.3, calls=4, service_s=0.05)
    assert admission.limit < 64 / 2


def test_refusals_are_held_longer_the_more_callers_are_refused():
    admission = Admission(0.03, 4, 100, 200, 5.0, Clock())
    assert admission.hold_s() == pytest.approx(0.01)
    admission.held = 199
    assert admission.hold_s() == pytest.approx(1.0)  # 200 held callers: 200 refusals a second
    admission.held = 10_000
    assert 2.5 <= admission.hold_s() <= 5.0  # never longer than max_hold_s: callers time out


def test_holds_at_the_cap_are_spread_so_refused_callers_do_not_come_back_together():
    draws = iter([0.0, 0.5, 0.999])
    admission = Admission(0.03, 4, 100, 200, 0.5, Clock(), draw=lambda: next(draws))
    admission.held = 49
    assert admission.hold_s() == pytest.approx(0.25)  # below the cap: nothing drawn
    admission.held = 10_000
    holds = [admission.hold_s() for _ in range(3)]
    assert holds == pytest.approx([0.5, 0.375, 0.25], abs=1e-3)


def test_retry_after_is_the_backlogs_drain_time_in_whole_seconds():
    admission = Admission(0.03, 4, 100, 200, 5.0, Clock())
    assert admission.retry_after_s() == 1
    admission.throughput, admission.in_flight, admission.held = 1000.0, 100, 2400
    assert admission.retry_after_s() == 3
    admission.held = 10**6
    assert admission.retry_after_s() == 30
