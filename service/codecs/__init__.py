"""Wire formats: turning request bodies into named tensors and model outputs into answers."""

from __future__ import annotations

import math

import msgspec

from service.errors import BadRequest


def decode_json(body: bytes) -> object:
    """Strict JSON (no NaN/Infinity literals); a body that is not JSON is a 400 saying why.

    No body the gateway takes nests more than a few levels, so a deeply nested one (thousands of
    ``[``) is refused with a 400 when the decoder runs out of depth, not answered with a 500.
    """
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise BadRequest(f"malformed JSON: {error}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def is_finite_number(value: object) -> bool:
    """Whether a decoded JSON value is a finite number (a bool is not). JSON integers have no
    bound, and one too large for a float is not finite: ``math.isfinite`` raises on it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
