"""Names and request ids: one rule for what reaches paths and labels; ids unique, unguessable,
signed."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.errors import BadRequest
from service.names import TIME_DIGITS, RequestIds, checked_name, endpoint_of

IDS = RequestIds("a-monitor-token-for-these-tests")


def test_request_ids_name_their_endpoint_and_never_repeat_across_threads():
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: IDS.new("cancer"), range(20_000)))
    assert len(set(ids)) == len(ids)
    assert {endpoint_of(i) for i in ids} == {"cancer"}
    assert len({i[-14:-6] for i in ids}) > 19_000  # random, not a counter


def test_request_ids_are_in_time_order_and_say_when_in_milliseconds():
    """Time first, so the stores' key index grows at its end (service/names.py)."""
    before = time.time_ns() // 1_000_000
    ids = [IDS.new("cancer") for _ in range(2_000)]
    after = time.time_ns() // 1_000_000
    times = [int(i.split(":")[1][:TIME_DIGITS], 16) for i in ids]
    assert before <= times[0] and times == sorted(times) and times[-1] <= after
    assert all(len(i.split(":")[1]) == 32 for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids():
    IDS.new("cancer")  # the parent has ids buffered
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, IDS.new("cancer").encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 100).decode()
    assert endpoint_of(from_child) == "cancer"
    assert from_child != IDS.new("cancer")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "", "x" * 65, "a b", "é", "a\nb"])
def test_names_that_could_escape_a_path_or_a_label_are_refused(name):
    with pytest.raises(BadRequest):
        checked_name("endpoint", name)
    assert endpoint_of(f"{name}:{'0' * 32}") is None


def test_only_ids_a_gateway_gave_to_a_recorded_answer_with_the_same_secret_are_recorded():
    """The monitor holds a label for its record only when its id is signed as recorded
    (service/names.py ``RequestIds``): not a made-up id of the right form, an id of another
    secret, one changed in any digit, or the id of an answer nothing records."""
    given = IDS.new("cancer")
    assert IDS.recorded(given) and RequestIds("a-monitor-token-for-these-tests").recorded(given)
    assert not RequestIds("another-monitor-token").recorded(given)
    assert not RequestIds(None).recorded(given)
    changed = [given[:i] + ("0" if c != "0" else "1") + given[i + 1 :] for i, c in enumerate(given)]
    assert not any(IDS.recorded(i) for i in changed if endpoint_of(i) is not None)
    made_up = [f"cancer:{os.urandom(16).hex()}" for _ in range(1_000)]
    assert all(endpoint_of(i) == "cancer" for i in made_up)
    assert sum(IDS.recorded(i) for i in made_up) <= 1  # 2**-24 each
    assert not IDS.recorded("cancer:" + "0" * 32) and not IDS.recorded("not an id")
    refused = IDS.unrecorded(given)
    assert refused[:-6] == given[:-6] and endpoint_of(refused) == "cancer"
    assert not IDS.recorded(refused)
    no_secret = RequestIds(None)
    assert no_secret.recorded(no_secret.new("cancer"))
