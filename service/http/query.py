"""Query parameters, read strictly: a value that is not what the route takes is a 400 naming it.

``str.isdigit`` accepts characters such as "²" that ``int`` refuses, so numbers are matched against
ASCII digits here, once, for every route of both processes.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from service.errors import BadRequest

DIGITS = re.compile(r"[0-9]{1,9}")


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name`` as an integer from ``low`` to ``high`` (``default`` if absent)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def bool_param(request: Request, name: str, default: bool = False) -> bool:
    """The query parameter ``name`` as ``true`` or ``false``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return raw == "true"


def wants_html(request: Request) -> bool:
    """Whether the caller asked for an HTML page rather than JSON: ``?format=html`` (or
    ``json``), else an ``Accept`` header that prefers ``text/html`` to JSON, as browsers send.
    Clients that accept anything (``*/*``) get JSON, as before."""
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in ("html", "json"):
            raise BadRequest("format must be html or json")
        return chosen == "html"
    accept = request.headers.get("accept", "")
    return _preference(accept, "text/html") > _preference(accept, "application/json")


def _preference(accept: str, media: str) -> float:
    """The quality ``accept`` gives ``media``: its most specific matching range's ``q``."""
    kind = media.split("/")[0]
    best, specificity = 0.0, -1
    for part in accept.split(","):
        fields = [field.strip() for field in part.split(";")]
        pattern = fields[0].lower()
        rank = {media: 2, f"{kind}/*": 1, "*/*": 0}.get(pattern)
        if rank is None or rank < specificity:
            continue
        q = 1.0
        for field in fields[1:]:
            name, _, value = field.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, specificity = q, rank
    return best
