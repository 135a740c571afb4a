"""Sticky buckets: a routing key always hashes to the same bucket, on every worker and replica.

``bucket_of(salt, key)`` is ``blake2b(salt, key) mod 10000`` (not Python's ``hash``, which differs
between processes). ``allocate`` gives each serving variant one contiguous range of buckets:
candidates first, from bucket 0 upward in their configured order, stable variants after them. So
raising a candidate's weight only takes buckets from the stable side: while a canary ramps up, no
user flips back and forth, and a user once moved to the candidate stays there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

BUCKETS = 10_000


def key_digest(salt: str, key: str) -> bytes:
    """The salted hash of a routing key: what its bucket derives from, and (in hex) the unit an
    experiment counts, so a user's id itself is never stored."""
    return hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()


def bucket_of(salt: str, key: str) -> int:
    """The bucket of ``key`` for an endpoint salted with ``salt``, in [0, BUCKETS)."""
    return bucket_of_digest(key_digest(salt, key))


def bucket_of_digest(digest: bytes) -> int:
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class BucketRange:
    """Buckets ``[start, stop)`` owned by ``variant``."""

    variant: str
    start: int
    stop: int


def allocate(weights: Sequence[tuple[str, float, bool]]) -> tuple[BucketRange, ...]:
    """Contiguous ranges for ``(variant, weight, is_candidate)``; candidates first, stable last.

    Bucket counts are the weights' shares of BUCKETS, rounded so that they add up exactly; a variant
    with weight 0 owns no bucket.
    """
    ordered = [w for w in weights if w[2]] + [w for w in weights if not w[2]]
    total = sum(weight for _, weight, _ in ordered)
    if total <= 0:
        raise ValueError("the weights must add up to more than 0")
    ranges, start, cumulative = [], 0, 0.0
    for name, weight, _ in ordered:
        cumulative += weight
        stop = round(cumulative / total * BUCKETS)
        if stop > start:
            ranges.append(BucketRange(name, start, stop))
        start = stop
    return tuple(ranges)


def owner(ranges: Sequence[BucketRange], bucket: int) -> str:
    """The variant owning ``bucket`` (ranges are few: a linear scan beats bisect here)."""
    for bucket_range in ranges:
        if bucket < bucket_range.stop:
            return bucket_range.variant
    return ranges[-1].variant
