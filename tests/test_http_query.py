"""Reading requests strictly: the format a caller wants (HTML for browsers, JSON for clients)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from service.errors import BadRequest
from service.http.query import wants_html

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def request(accept: str | None = None, query: str = "") -> Request:
    headers = [] if accept is None else [(b"accept", accept.encode())]
    return Request({"type": "http", "headers": headers, "query_string": query.encode()})


@pytest.mark.parametrize(
    ("accept", "query", "html"),
    [
        (BROWSER, "", True),
        ("text/*", "", True),
        (None, "", False),  # a client that says nothing gets JSON, as before
        ("*/*", "", False),  # aiohttp, curl, httpx, requests
        ("application/json", "", False),
        ("application/json, text/html;q=0.5", "", False),
        ("text/html;q=0.4, application/json;q=0.9", "", False),
        ("text/html;q=oops, application/json", "", False),
        (BROWSER, "format=json", False),
        ("*/*", "format=html", True),
    ],
)
def test_html_only_for_who_prefers_it(accept, query, html):
    assert wants_html(request(accept, query)) is html


def test_an_unknown_format_is_a_clear_400():
    with pytest.raises(BadRequest, match="format must be html or json"):
        wants_html(request(BROWSER, "format=xml"))
