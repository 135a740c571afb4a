"""The worker's budget for bodies still arriving (service/gateway/arriving.py): what is
counted, when it is let go, and the refusal past the limit."""

from __future__ import annotations

import pytest

from service.errors import Overloaded
from service.gateway.arriving import ArrivingBodies
from tests.helpers import receiving


def part(body: bytes, more: bool = True) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_bodies_count_together_while_they_arrive_and_not_once_they_have() -> None:
    bodies = ArrivingBodies()
    one = bodies.counted(receiving(part(b"abcd"), part(b"ef", more=False)), limit=100)
    two = bodies.counted(receiving(part(b"xyz")), limit=100)
    await one()
    await two()
    assert (bodies.held, one.taken, two.taken) == (7, 4, 3)
    await one()  # its last part: arrived, handed on whole
    assert bodies.held == 3
    two.release()  # its request is over (answered, or its handler stopped reading)
    assert bodies.held == 0


async def test_a_body_that_comes_whole_is_not_counted() -> None:
    bodies = ArrivingBodies()
    whole = bodies.counted(receiving(part(b"x" * 1000, more=False)), limit=10)
    assert (await whole())["body"] == b"x" * 1000
    assert bodies.held == 0 and not whole.refused


async def test_a_client_gone_lets_its_body_go() -> None:
    bodies = ArrivingBodies()
    gone = bodies.counted(receiving(part(b"abc"), {"type": "http.disconnect"}), limit=100)
    await gone()
    assert bodies.held == 3
    assert (await gone())["type"] == "http.disconnect" and bodies.held == 0


async def test_past_the_limit_a_body_is_refused_with_its_bytes_and_the_others_kept() -> None:
    bodies = ArrivingBodies()
    first = bodies.counted(receiving(part(b"123456")), limit=10)
    await first()
    late = bodies.counted(receiving(part(b"ab"), part(b"cde")), limit=10)
    await late()
    with pytest.raises(Overloaded) as refused:
        await late()
    assert refused.value.status == 429 and "Retry-After" in refused.value.headers
    assert late.refused and not first.refused
    assert bodies.held == 6 and late.taken == 0
    late.release()  # the request ends: nothing more to let go
    assert bodies.held == 6
