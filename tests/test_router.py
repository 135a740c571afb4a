"""Variant choice: weights, shadows never answering, pinning by name or version."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from traffic.router import Router, UnknownVariant, Variant

STABLE = Variant("stable", "v1", 90, "stable")
CANDIDATE = Variant("candidate", "v2", 10, "candidate")
SHADOW = Variant("shadow", "v3", 50, "shadow")


def test_shares_follow_weights_and_shadows_never_answer():
    router = Router([STABLE, CANDIDATE, SHADOW], rng=random.Random(1))
    counts = Counter(router.choose().name for _ in range(20_000))
    assert counts["shadow"] == 0
    assert abs(counts["candidate"] / 20_000 - 0.10) < 0.01


def test_zero_weight_variant_gets_nothing():
    router = Router([STABLE, Variant("candidate", "v2", 0, "candidate")])
    assert {router.choose().name for _ in range(1000)} == {"stable"}


def test_pinning_by_version_or_name():
    router = Router([STABLE, CANDIDATE, SHADOW])
    assert router.pinned(model_version="v2") == CANDIDATE
    assert router.pinned(name="shadow") == SHADOW
    with pytest.raises(UnknownVariant, match="stable \\(v1\\)"):
        router.pinned(model_version="v9")


def test_an_endpoint_needs_a_serving_variant():
    with pytest.raises(ValueError):
        Router([SHADOW])
