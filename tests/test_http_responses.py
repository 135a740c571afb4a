"""The error handlers: every failure a JSON answer; a store's trouble told without its driver's
words, which name the database's host, port and user."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from service.http import responses
from storage.database import StoreFull, StoreUnavailable

DRIVER = (
    'connection failed: connection to server at "10.0.4.7", port 5432 failed: FATAL:  password '
    'authentication failed for user "gateway"'
)
"""What psycopg says when the database refuses the gateway's credentials."""


@pytest.mark.parametrize("kind", [StoreUnavailable, StoreFull])
def test_a_store_failure_is_a_503_whose_details_stay_in_the_log(kind, caplog, monkeypatch):
    """Anyone may post to ``/feedback``, and its 503 carried the monitor's 503, which carried
    the database's address and user."""
    monkeypatch.setattr(responses, "_server_errors", {})  # no other test's throttling

    def fail(request: Request) -> None:
        raise kind(f"{kind.summary}: {DRIVER}")

    app = Starlette(
        routes=[Route("/feedback", fail, methods=["POST"])],
        exception_handlers=responses.EXCEPTION_HANDLERS,
    )
    with caplog.at_level(logging.WARNING, logger=responses.log.name):
        answer = TestClient(app, raise_server_exceptions=False).post("/feedback")
    assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0
    assert answer.json() == {"error": f"{kind.summary}; nothing was changed"}
    assert DRIVER in caplog.text
