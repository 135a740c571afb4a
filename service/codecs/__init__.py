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


MAX_MAGNITUDE = 1e15
"""The largest a caller's measurement may be, either way: a regressor's label, a reward. Far past
any business outcome (a billion in micro-units), and small enough that the monitor's sums,
squares and ranges over billions of them stay finite: a finite label or reward near 1e308, which
anyone may post for an answer of their own, overflowed them and failed the analysis (a
regressor's quality, an experiment's readout) on every run while it was kept."""


def is_bounded_number(value: object) -> bool:
    """Whether a decoded JSON value is a finite number of at most ``MAX_MAGNITUDE`` either way."""
    return is_finite_number(value) and abs(value) <= MAX_MAGNITUDE


def is_finite_number(value: object) -> bool:
    """Whether a decoded JSON value is a finite number (a bool is not). JSON integers have no
    bound, and one too large for a float is not finite: ``math.isfinite`` raises on it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
