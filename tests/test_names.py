"""Names and request ids: one rule for what reaches paths and labels; ids unique, unguessable."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.errors import BadRequest
from service.names import TIME_DIGITS, checked_name, endpoint_of, new_request_id


def test_request_ids_name_their_endpoint_and_never_repeat_across_threads():
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: new_request_id("cancer"), range(20_000)))
    assert len(set(ids)) == len(ids)
    assert {endpoint_of(i) for i in ids} == {"cancer"}
    assert len({i[-8:] for i in ids}) > 19_000  # random, not a counter


def test_request_ids_are_in_time_order_and_say_when_in_milliseconds():
    """Time first, so the stores' key index grows at its end (service/names.py)."""
    before = time.time_ns() // 1_000_000
    ids = [new_request_id("cancer") for _ in range(2_000)]
    after = time.time_ns() // 1_000_000
    times = [int(i.split(":")[1][:TIME_DIGITS], 16) for i in ids]
    assert before <= times[0] and times == sorted(times) and times[-1] <= after
    assert all(len(i.split(":")[1]) == 32 for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_request_id("cancer")  # the parent has ids buffered
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, new_request_id("cancer").encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 100).decode()
    assert endpoint_of(from_child) == "cancer"
    assert from_child != new_request_id("cancer")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "", "x" * 65, "a b", "é", "a\nb"])
def test_names_that_could_escape_a_path_or_a_label_are_refused(name):
    with pytest.raises(BadRequest):
        checked_name("endpoint", name)
    assert endpoint_of(f"{name}:{'0' * 32}") is None
