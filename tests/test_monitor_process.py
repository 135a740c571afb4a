"""Which records a monitor stores (service/monitor/process.py): those of endpoint and variant
names of the routing state, for as long as the monitor runs; those that left it, for
``KNOWN_GRACE_S``; none other, however many records name them (``KnownVariants``); and only those
with the shape of an answer of their model (``fits_its_model``)."""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import pytest

from monitors.records import PredictionRecord
from service.monitor.process import KNOWN_GRACE_S, REFRESH_S, KnownVariants, fits_its_model
from tests.helpers import TWO_FEATURE_CARD, Clock

REGRESSOR_CARD = dataclasses.replace(TWO_FEATURE_CARD, task="regression", class_labels=())


class RoutingState:
    """The routing tables a monitor reads: variants by endpoint, and how often they were read."""

    def __init__(self, **variants: list[str]) -> None:
        self.variants = variants
        self.reads = 0

    def __call__(self) -> dict:
        self.reads += 1
        return {
            endpoint: SimpleNamespace(variants=[SimpleNamespace(name=n) for n in names])
            for endpoint, names in self.variants.items()
        }


def test_a_variant_of_the_routing_state_is_known_for_as_long_as_the_monitor_runs() -> None:
    clock = Clock(1000.0)
    known = KnownVariants(RoutingState(cancer=["stable", "candidate"]), clock)
    assert known.knows("cancer", "stable")
    for _ in range(3 * 24):  # three days, a record an hour
        clock.now += 3600.0
        assert known.knows("cancer", "stable") and known.knows("cancer", "candidate")


def test_a_variant_that_left_is_known_for_the_grace_period_then_not() -> None:
    clock = Clock(1000.0)
    state = RoutingState(cancer=["stable", "candidate"])
    known = KnownVariants(state, clock)
    assert known.knows("cancer", "candidate")
    state.variants["cancer"] = ["stable"]  # the candidate was removed
    clock.now += KNOWN_GRACE_S - 10.0
    assert known.knows("cancer", "candidate")  # its last batches
    clock.now += 20.0
    assert not known.knows("cancer", "candidate")
    assert known.knows("cancer", "stable")


def test_a_name_never_in_the_routing_state_is_refused_and_read_for_at_most_once_a_second() -> None:
    clock = Clock(1000.0)
    state = RoutingState(cancer=["stable"])
    known = KnownVariants(state, clock)
    for _ in range(10_000):
        assert not known.knows("cancer", "made-up")
        assert not known.knows("nobody", "stable")
    assert state.reads == 1
    clock.now += REFRESH_S
    state.variants["new"] = ["stable"]  # an endpoint added meanwhile is known at the next read
    assert known.knows("new", "stable")
    assert state.reads == 2


def test_a_variant_added_just_after_a_read_is_known_for_its_first_records() -> None:
    """A variant added to the routing state just after the monitor read it, answering at once:
    its first records are stored (they were refused until the next read, up to a second later,
    and lost: the gateway had its 200). Records answered before the last read, or stamped ahead
    of the monitor's clock, still cost no read."""
    clock, wall = Clock(1000.0), Clock(1_700_000_000.0)
    state = RoutingState(cancer=["stable"])
    known = KnownVariants(state, clock, wall)
    assert known.knows("cancer", "stable", wall.now)
    for moving in (clock, wall):
        moving.now += 0.2
    state.variants["cancer"] = ["stable", "candidate"]  # added by an admin
    answered = wall.now + 0.05  # by a gateway that follows the routing state
    for moving in (clock, wall):
        moving.now += 0.3
    assert known.knows("cancer", "candidate", answered)
    assert state.reads == 2
    for _ in range(1000):
        assert not known.knows("cancer", "made-up", answered)
        assert not known.knows("cancer", "made-up", wall.now + 3600.0)
    assert state.reads == 2


def test_callers_arriving_while_the_routing_state_is_read_wait_for_it() -> None:
    """Batches from two gateway workers stored at once by two threads, the routing state not read
    yet: both are known. (The second was refused whole while the first thread read it, and its
    records lost: the gateway had its 200.)"""
    reading, release = threading.Event(), threading.Event()
    state = RoutingState(cancer=["stable"])

    def slow_read() -> dict:
        reading.set()
        release.wait(timeout=10)
        return state()

    known = KnownVariants(slow_read, Clock(1000.0))
    answers: dict[str, bool] = {}
    first = threading.Thread(target=lambda: answers.update(first=known.knows("cancer", "stable")))
    first.start()
    assert reading.wait(timeout=10)
    second = threading.Thread(target=lambda: answers.update(second=known.knows("cancer", "stable")))
    second.start()
    second.join(timeout=0.2)
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert answers == {"first": True, "second": True}
    assert state.reads == 1


def answer(**fields) -> PredictionRecord:
    """A record of two rows answered by the two-feature classifier, with ``fields`` changed."""
    answered = dict(
        request_id="e:" + "0" * 32,
        at=1000.0,
        endpoint="e",
        variant="stable",
        model="m:v1",
        predictions=["yes", "no"],
        latency_s=0.001,
        inputs=[[1.0, 2.0], [3.0, None]],
        shadow={"next": ["no", "no"]},
    )
    return PredictionRecord(**{**answered, **fields})


def test_a_record_with_the_shape_of_its_models_answer_fits() -> None:
    assert fits_its_model(answer(), TWO_FEATURE_CARD)
    assert fits_its_model(answer(inputs=None, shadow={}), TWO_FEATURE_CARD)  # inputs sampled out
    assert fits_its_model(answer(predictions=[0.5, None]), REGRESSOR_CARD)  # null: not finite
    failed = answer(predictions=[], inputs=None, shadow={}, outcome="error")
    assert fits_its_model(failed, TWO_FEATURE_CARD)
    assert fits_its_model(answer(predictions=[1, 2]), None)  # its model left the store


@pytest.mark.parametrize(
    "fields",
    [
        {"predictions": []},
        {"predictions": ["yes"]},  # two input rows
        {"predictions": ["yes", "maybe"]},  # not one of its classes
        {"predictions": ["yes", {"no": 1}]},
        {"inputs": [[1.0, 2.0], [3.0]]},
        {"inputs": [[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]},
        {"inputs": []},
        {"shadow": {"next": ["no"]}},
        {"shadow": {"next": ["no", ["no"]]}},
        {"outcome": "error"},  # a failed answer carries no prediction
        {"outcome": "error", "predictions": [], "shadow": {}},  # nor inputs
    ],
)
def test_a_record_that_does_not_fit_its_model_is_refused(fields: dict) -> None:
    assert not fits_its_model(answer(**fields), TWO_FEATURE_CARD)


@pytest.mark.parametrize(
    "predictions", [["1.5", 2.0], [True, 2.0], [float("inf"), 2.0], [10**400, 2.0]]
)
def test_a_regressors_record_predicts_numbers(predictions: list) -> None:
    assert not fits_its_model(answer(predictions=predictions, shadow={}), REGRESSOR_CARD)


def test_rows_of_a_model_that_left_the_store_are_as_wide_as_each_other() -> None:
    assert not fits_its_model(answer(inputs=[[1.0, 2.0], [3.0]]), None)
    assert not fits_its_model(answer(predictions=[[1], 2]), None)
