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
