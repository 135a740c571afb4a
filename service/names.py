"""The one rule for names that reach URLs, headers, metric labels and file paths, and the form of
the gateway's request ids.

Endpoint, variant and model names come in through gateway.yaml, the admin API, posted records and
labels; every one of those checks them here, against the same pattern. A name starts with a letter
or digit, so ``.`` and ``..`` are never names, and holds no separator, so a name joined into a path
stays one path segment.
"""

from __future__ import annotations

import os
import re
import threading
import time

from service.errors import BadRequest

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
"""``_NAME`` in words, for refusals."""
NAME_PATTERN = f"^{_NAME}$"
"""Endpoint and variant names (and each half of a model tag), for pydantic fields."""
LATEST = "latest"
"""BentoML's alias for a model's newest version, never a version here: what a variant serves (and
a rollout's candidate, a pin, a record's model) must not change when a version is added."""
_NAME_RE = re.compile(_NAME)
_TAG_RE = re.compile(f"{_NAME}:{_NAME}")
_UNIT_RE = re.compile("[0-9a-f]{16}")
_REQUEST_ID_RE = re.compile(f"(?P<endpoint>{_NAME}):[0-9a-f]{{32}}")
"""``<endpoint>:<milliseconds since 1970, 48 bits><80 random bits>``, both in hex: unguessable,
in time order, and it says which endpoint answered, so a label can be checked against that
endpoint's models before its record reaches the monitor. Time first because the id is the stores'
key: new keys go to the end of its index instead of to a random page each (with 60,000 records
stored, a random key made storing a record cost twice as much, and more as the store grows)."""
TIME_DIGITS = 12
"""Hex digits of the id's time part (48 bits of milliseconds: until the year 10889)."""


class _RandomHex:
    """80-bit random hex strings from the OS's CSPRNG, read 256 at a time: one system call per
    request was a measurable part of a served answer. Safe across threads and forks."""

    IDS_PER_READ = 256
    BYTES = 10

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child must not repeat its parent's

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._hex, self._next = "", 0

    def __call__(self) -> str:
        with self._lock:
            if self._next >= len(self._hex):
                self._hex, self._next = os.urandom(self.BYTES * self.IDS_PER_READ).hex(), 0
            start = self._next
            self._next += 2 * self.BYTES
            return self._hex[start : self._next]


_random_hex = _RandomHex()


def new_request_id(endpoint: str) -> str:
    """A fresh request id for an answer of ``endpoint``."""
    return f"{endpoint}:{time.time_ns() // 1_000_000:0{TIME_DIGITS}x}{_random_hex()}"


def endpoint_of(request_id: object) -> str | None:
    """The endpoint a gateway request id names, or None if it is not one."""
    match = _REQUEST_ID_RE.fullmatch(request_id) if isinstance(request_id, str) else None
    return match["endpoint"] if match else None


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


def is_unit(value: object) -> bool:
    """Whether ``value`` is an experiment unit as the gateway records it (traffic/buckets.py
    ``key_digest``, in hex)."""
    return isinstance(value, str) and _UNIT_RE.fullmatch(value) is not None


def is_tag(value: object) -> bool:
    return isinstance(value, str) and _TAG_RE.fullmatch(value) is not None


def checked_name(what: str, value: object) -> str:
    """``value`` if it is a valid name, else a 400 naming ``what``."""
    if not is_name(value):
        raise BadRequest(f"{what} must be {NAME_RULE}")
    return value
