"""The prediction gate's own pieces (service/gateway/http/gate.py): which calls are predictions,
request headers and bodies read as Starlette reads them, a body still arriving read whole (and no
further than just past the limit), counted among the bodies arriving while it does."""

from __future__ import annotations

import pytest
from starlette.requests import ClientDisconnect

from service.errors import Overloaded
from service.gateway.arriving import ArrivingBodies
from service.gateway.http import gate
from service.gateway.http.gate import PredictionRequest, _whole_body, prediction
from tests.helpers import receiving


def scope(path: str, method: str = "POST", headers=()) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": list(headers)}


def test_prediction_calls_are_recognised_with_their_parameters() -> None:
    name, params, _ = prediction(scope("/v2/models/cancer/versions/v2/infer"))
    assert (name, params) == ("infer", {"model": "cancer", "version": "v2"})
    name, params, _ = prediction(scope("/v2/models/cancer/infer"))
    assert (name, params) == ("infer", {"model": "cancer"})
    assert prediction(scope("/predict/cancer"))[:2] == ("predict", {"endpoint": "cancer"})
    assert prediction(scope("/predict/cancer", method="GET")) is None
    assert prediction(scope("/v2/models/cancer/ready")) is None
    # asked again, from the remembered match: the same answer, parameters a fresh dict each time
    first, again = prediction(scope("/predict/cancer")), prediction(scope("/predict/cancer"))
    assert first == again and first[1] is not again[1]


def test_the_remembered_paths_stay_bounded(monkeypatch) -> None:
    monkeypatch.setattr(gate, "MAX_KNOWN_PATHS", 8)
    gate._known_paths.clear()
    for i in range(50):
        assert prediction(scope(f"/predict/endpoint-{i}"))[1] == {"endpoint": f"endpoint-{i}"}
        assert len(gate._known_paths) <= 8
    long_path = "/predict/" + "x" * 1000
    assert prediction(scope(long_path))[1] == {"endpoint": "x" * 1000}
    assert long_path not in gate._known_paths


def test_headers_are_read_without_case_and_the_first_of_repeated_ones_wins() -> None:
    raw = [
        (b"x-request-id", b"first"),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"second"),
    ]
    headers = PredictionRequest(scope("/predict/cancer", headers=raw), receiving(), ARRIVED).headers
    assert headers["X-Request-Id"] == headers.get("x-request-id") == "first"
    assert "Content-Type" in headers and "x-user-id" not in headers
    assert headers.get("Inference-Header-Content-Length") is None
    assert headers.get("x-user-id", "none") == "none"


ARRIVED = {"type": "http.request", "body": b"ab", "more_body": False}


async def test_a_body_still_arriving_is_read_whole_however_it_comes() -> None:
    first = {"type": "http.request", "body": b"a", "more_body": True}
    rest = receiving(
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": b"bc", "more_body": False},
    )
    bodies = ArrivingBodies()
    whole = await _whole_body(first, bodies.counted(rest, 100), limit=100)
    assert whole == {"type": "http.request", "body": b"abc", "more_body": False}
    assert bodies.held == 0  # arrived: no longer counted
    request = PredictionRequest(scope("/predict/x"), receiving(), whole)
    assert await request.body() == b"abc" and await request.body() == b"abc"
    assert [chunk async for chunk in PredictionRequest(scope("/x"), receiving(), whole).stream()]


async def test_a_body_still_arriving_is_read_no_further_than_past_the_limit() -> None:
    chunk = {"type": "http.request", "body": b"xyz", "more_body": True}
    unread = {"type": "http.request", "body": b"never", "more_body": False}
    rest = receiving(dict(chunk), unread)
    bodies = ArrivingBodies()
    whole = await _whole_body(dict(chunk), bodies.counted(rest, 100), limit=4)
    assert whole["body"] == b"xyzxyz"  # past the limit: the handler refuses it (413)
    assert bodies.held == 0


async def test_a_client_gone_before_its_body_ends_is_a_disconnect() -> None:
    first = {"type": "http.request", "body": b"a", "more_body": True}
    bodies = ArrivingBodies()
    gone = await _whole_body(
        first, bodies.counted(receiving({"type": "http.disconnect"}), 100), 100
    )
    assert gone == {"type": "http.disconnect"} and bodies.held == 0
    with pytest.raises(ClientDisconnect):
        await PredictionRequest(scope("/predict/x"), receiving(), gone).body()
    with pytest.raises(ClientDisconnect):
        [_ async for _ in PredictionRequest(scope("/predict/x"), receiving(), gone).stream()]


async def test_a_body_past_the_bytes_arriving_in_the_worker_is_refused_and_let_go() -> None:
    bodies = ArrivingBodies()
    waiting = bodies.counted(receiving(), 10)
    waiting.take(6)  # another body, still arriving
    first = {"type": "http.request", "body": b"abc", "more_body": True}
    more = receiving({"type": "http.request", "body": b"defg", "more_body": True})
    with pytest.raises(Overloaded):
        await _whole_body(first, bodies.counted(more, 10), limit=100)
    assert bodies.held == 6  # its 3 bytes let go, the other body's kept
