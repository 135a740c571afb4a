"""Slow clients (service/http/slow_clients.py), through uvicorn's own HTTP protocol: what counts as
waiting on the client, and what a sweep past the limit closes, with or without a 408."""

from __future__ import annotations

import asyncio
import time

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http import slow_clients
from tests.helpers import answered, connect

HEAD = b"POST / HTTP/1.1\r\nHost: example\r\nContent-Length: 10\r\n"
LIMIT_S = 30.0


@pytest.fixture(autouse=True)
def patched(monkeypatch):
    """The module's parser callbacks on uvicorn's protocol for this test only, and no sweeper
    task (the test sweeps by hand)."""
    for name in ("connection_made", "on_message_begin", "on_message_complete"):
        monkeypatch.setattr(HttpToolsProtocol, name, getattr(slow_clients, f"_{name}"))

    class Running:
        def done(self) -> bool:
            return False

    monkeypatch.setattr(slow_clients, "_sweeper", Running())


def waiting_app():
    """An app that reads the whole body, then answers once ``release`` is set."""
    release = asyncio.Event()

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app, release


async def test_a_client_that_sends_nothing_or_half_a_request_is_closed_with_a_408():
    app, _ = waiting_app()
    silent, silent_transport = connect(app)
    half_head, half_head_transport = connect(app)
    half_head.data_received(HEAD)
    half_body, half_body_transport = connect(app)
    half_body.data_received(HEAD + b"\r\n12345")
    await asyncio.sleep(0)
    connections = {silent, half_head, half_body}
    slow_clients.close_slow_ones(connections, LIMIT_S, time.monotonic() + LIMIT_S - 1)
    assert not any(t.closed for t in (silent_transport, half_head_transport, half_body_transport))
    slow_clients.close_slow_ones(connections, LIMIT_S, time.monotonic() + LIMIT_S + 1)
    for transport in (silent_transport, half_head_transport, half_body_transport):
        assert transport.closed and transport.writes == [slow_clients.TIMED_OUT]


async def test_what_the_server_makes_a_caller_wait_for_is_not_the_clients_slowness():
    app, release = waiting_app()
    protocol, transport = connect(app)
    protocol.data_received(HEAD + b"\r\n1234567890")  # all of it: now the app keeps it waiting
    await asyncio.sleep(0)
    slow_clients.close_slow_ones({protocol}, LIMIT_S, time.monotonic() + LIMIT_S + 1)
    assert not transport.closed
    release.set()
    await answered(protocol, b"")
    assert transport.writes[0].startswith(b"HTTP/1.1 200")
    slow_clients.close_slow_ones({protocol}, LIMIT_S, time.monotonic() + LIMIT_S + 1)
    assert not transport.closed  # idle between requests: uvicorn's keep-alive, not this


async def test_a_connection_whose_answer_has_begun_is_closed_without_a_408():
    app, _ = waiting_app()
    protocol, transport = connect(app)
    protocol.data_received(HEAD)
    protocol.cycle = type("Cycle", (), {"response_started": True})()
    slow_clients.close_slow_ones({protocol}, LIMIT_S, time.monotonic() + LIMIT_S + 1)
    assert transport.closed and transport.writes == []


def test_past_half_the_open_file_limit_a_connection_may_wait_on_its_client_a_second(monkeypatch):
    monkeypatch.setattr(slow_clients, "_limit_s", LIMIT_S)
    monkeypatch.setattr(slow_clients, "_pressure_at", 512)
    assert slow_clients.limit_for(512) == LIMIT_S
    assert slow_clients.limit_for(513) == slow_clients.UNDER_PRESSURE_S == 1.0
    monkeypatch.setattr(slow_clients, "_limit_s", 0.5)  # a limit already below stays
    assert slow_clients.limit_for(513) == 0.5
