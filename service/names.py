"""The one rule for names that reach URLs, headers, metric labels and file paths, and the form of
the gateway's request ids.

Endpoint, variant and model names come in through gateway.yaml, the admin API, posted records and
labels; every one of those checks them here, against the same pattern. A name starts with a letter
or digit, so ``.`` and ``..`` are never names, and holds no separator, so a name joined into a path
stays one path segment.
"""

from __future__ import annotations

import hashlib
import hmac
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
"""``<endpoint>:<milliseconds since 1970, 48 bits><56 random bits><24-bit signature>``, all in
hex: unguessable, in time order, and it says which endpoint answered, so a label can be checked
against that endpoint's models before its record reaches the monitor. Time first because the id is
the stores' key: new keys go to the end of its index instead of to a random page each (with 60,000
records stored, a random key made storing a record cost twice as much, and more as the store
grows). The signature (``RequestIds``) tells an id a gateway gave from one made up."""
TIME_DIGITS = 12
"""Hex digits of the id's time part (48 bits of milliseconds: until the year 10889)."""
SIGNATURE_BYTES = 3
"""The signature's size. Its one use is to decide whether a label or reward may wait for its
record (``RequestIds.recorded``), so a forger gains one waiting label per 2**24 tries, each a
call of its own (one bad item refuses a whole call). The 56 random bits keep ids unique: at
10,000 answers a second, two in the same millisecond would be alike about once in 50,000 years."""


class _RandomHex:
    """56-bit random hex strings from the OS's CSPRNG, read 256 at a time: one system call per
    request was a measurable part of a served answer. Safe across threads and forks."""

    IDS_PER_READ = 256
    BYTES = 7

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


class RequestIds:
    """Gives request ids, and tells an id that any gateway sharing its secret gave to an answer it
    records from one a caller made up.

    ``/feedback`` is anonymous, and a label whose record has not reached the monitor yet is held
    until it does. Made-up ids were held too: ten calls of 10,000 labels filled the bound on held
    labels (``monitor.max_pending_labels``) for a day, and every caller's early labels were
    refused; large ones filled the monitor's database. The monitor now holds a label or reward
    only when its id is signed as recorded; any other is taken only for an answer whose record is
    stored (as one given before this release, or before the secret changed, is). An answer that is
    never recorded (a refusal for bad input, an explanation) gets an id signed as unrecorded, so
    that cheap refusals cannot be a source of ids to hold labels for. The key comes from the
    monitor token, which every gateway and the monitor already share; without one (a monitor on
    loopback) the key is empty and the signature is only a checksum."""

    def __init__(self, monitor_token: str | None) -> None:
        key = hashlib.blake2b((monitor_token or "").encode(), person=b"request-ids").digest()
        self._recorded = hashlib.blake2b(key=key, digest_size=SIGNATURE_BYTES, person=b"recorded")
        self._unrecorded = hashlib.blake2b(
            key=key, digest_size=SIGNATURE_BYTES, person=b"unrecorded"
        )

    @staticmethod
    def _signature(keyed: hashlib.blake2b, body: str) -> str:
        hashed = keyed.copy()
        hashed.update(body.encode())
        return hashed.hexdigest()

    def new(self, endpoint: str) -> str:
        """A fresh request id for an answer of ``endpoint``, signed as recorded."""
        body = f"{endpoint}:{time.time_ns() // 1_000_000:0{TIME_DIGITS}x}{_random_hex()}"
        return body + self._signature(self._recorded, body)

    def unrecorded(self, request_id: str) -> str:
        """``request_id`` signed instead as the id of an answer nothing records: a label for it
        is refused rather than held for a record that never comes."""
        body = request_id[: -2 * SIGNATURE_BYTES]
        return body + self._signature(self._unrecorded, body)

    def recorded(self, request_id: str) -> bool:
        """Whether a gateway with this secret gave ``request_id`` to an answer it records."""
        if endpoint_of(request_id) is None:
            return False
        body, signature = request_id[: -2 * SIGNATURE_BYTES], request_id[-2 * SIGNATURE_BYTES :]
        return hmac.compare_digest(self._signature(self._recorded, body), signature)


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
