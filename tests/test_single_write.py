"""One write per answer (service/http/single_write.py), through uvicorn's own HTTP protocol: raw
request bytes in, the transport's writes out."""

from __future__ import annotations

import pytest

from service.http import single_write
from tests.helpers import RecordingTransport, answered, connect

single_write.apply()

GET = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: example\r\n\r\n"
CLOSE = b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"


def plain_app(body: bytes = b"hello", headers: list | None = None, status: int = 200):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": body})

    return app


async def serve(app, request: bytes) -> RecordingTransport:
    """One request on a new connection; the transport once it is answered and closed."""
    protocol, transport = connect(app)
    await answered(protocol, request)
    protocol.connection_lost(None)
    return transport


async def test_an_answer_leaves_in_one_write_with_its_head_first():
    headers = [(b"content-length", b"5"), (b"content-type", b"text/plain")]
    transport = await serve(plain_app(headers=headers), GET)
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello"
    ]


async def test_a_streamed_answer_sends_its_head_with_the_first_chunk_and_the_rest_after():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    transport = await serve(app, GET)
    assert len(transport.writes) == 2
    head, first = transport.writes[0].split(b"\r\n\r\n", 1)
    assert head == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked"
    assert first == b"3\r\none\r\n"
    assert transport.writes[1] == b"3\r\ntwo\r\n0\r\n\r\n"


async def test_an_answer_to_head_still_sends_its_head():
    transport = await serve(plain_app(headers=[(b"content-length", b"5")]), HEAD)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"]


@pytest.mark.parametrize("status", [204, 304])
async def test_an_answer_without_a_body_sends_its_head(status):
    transport = await serve(plain_app(body=b"", status=status), GET)
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(f"HTTP/1.1 {status} ".encode())


async def test_a_connection_not_kept_alive_is_closed_after_its_one_write():
    transport = await serve(plain_app(headers=[(b"content-length", b"5")]), CLOSE)
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
    ]
    assert transport.closed


async def test_an_app_that_fails_after_its_head_gets_the_connection_closed_not_a_hang():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    transport = await serve(app, GET)
    assert transport.closed
    assert transport.writes == []  # the head is held for a body that never came


async def test_two_answers_on_one_connection_each_take_one_write():
    protocol, transport = connect(plain_app(headers=[(b"content-length", b"5")]))
    for _ in range(2):
        await answered(protocol, GET)
    assert len(transport.writes) == 2
    assert all(write.endswith(b"\r\n\r\nhello") for write in transport.writes)
