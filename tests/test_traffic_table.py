"""Routing decisions (pure): bucket shares, stickiness while a canary ramps, pinning, shadows."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from traffic.buckets import BUCKETS, allocate, bucket_of
from traffic.table import (
    EndpointTable,
    PinRefused,
    RoutingError,
    RoutingPolicy,
    UnknownVariant,
    VariantSpec,
)

KEYS = [f"user-{i}" for i in range(100_000)]


def canary(candidate_weight: float, **policy) -> EndpointTable:
    return EndpointTable(
        "churn",
        (
            VariantSpec("stable", "churn:v1", "stable", 100 - candidate_weight),
            VariantSpec("candidate", "churn:v2", "candidate", candidate_weight),
        ),
        RoutingPolicy(**policy),
    )


def assignment(table: EndpointTable) -> dict[str, str]:
    return {key: table.route(key).variant.name for key in KEYS}


@pytest.mark.parametrize("weight", [5, 10, 25, 50])
def test_keyed_shares_are_within_one_point_of_the_weights(weight):
    counts = Counter(assignment(canary(weight)).values())
    assert abs(counts["candidate"] / len(KEYS) * 100 - weight) < 1


def test_ramping_the_candidate_only_moves_stable_keys_to_it():
    steps = [assignment(canary(w)) for w in (5, 25, 50)]
    for before, after in zip(steps, steps[1:]):
        moved = [k for k in KEYS if before[k] != after[k]]
        assert moved and all(before[k] == "stable" and after[k] == "candidate" for k in moved)


def test_the_same_key_gets_the_same_variant_every_time_and_salts_differ():
    table = canary(50)
    assert all(
        table.route("user-7").variant.name == table.route("user-7").variant.name for _ in range(50)
    )
    assert bucket_of("a", "user-7") == bucket_of("a", "user-7")
    differing = sum(bucket_of("a", k) != bucket_of("b", k) for k in KEYS[:1000])
    assert differing > 950  # a different endpoint salt reshuffles users


def test_bucket_hash_is_fixed_across_processes_and_releases():
    # blake2b(salt NUL key) mod 10000, not Python's per-process hash(). These values were computed
    # independently with hashlib; if they change, an upgrade would reshuffle every user.
    assert [bucket_of("churn", k) for k in ("user-1", "user-2", "alice")] == [8482, 172, 3065]


def test_allocation_covers_every_bucket_exactly_once():
    ranges = allocate([("a", 33.3, False), ("b", 33.3, True), ("c", 33.4, True), ("z", 0, True)])
    assert [r.variant for r in ranges] == ["b", "c", "a"]
    assert ranges[0].start == 0 and ranges[-1].stop == BUCKETS
    assert all(x.stop == y.start for x, y in zip(ranges, ranges[1:]))


def test_unkeyed_requests_follow_the_weights_or_are_refused_when_keys_are_required():
    rng = random.Random(3)
    counts = Counter(canary(20).route(rng=rng).variant.name for _ in range(20_000))
    assert abs(counts["candidate"] / 20_000 - 0.20) < 0.01
    strict = canary(20, key_header="x-user-id", require_key=True)
    with pytest.raises(RoutingError, match="needs a routing key"):
        strict.route()
    assert strict.route("user-1").reason == "key"


def test_pinning_by_name_or_version_and_switching_it_off():
    table = canary(10)
    assert table.route("user-1", pin_variant="candidate").variant.name == "candidate"
    assert table.route(pin_version="v2").reason == "pinned"
    assert table.route(pin_version="V2").variant.name == "candidate"  # as it was registered
    with pytest.raises(UnknownVariant):
        table.route(pin_variant="nope")
    with pytest.raises(RoutingError, match="does not allow pinning"):
        canary(10, allow_pinning=False).route(pin_variant="stable")
    assert canary(10, allow_pinning=False).route(pin_variant="stable", privileged=True)


def test_a_dark_variant_is_pinned_only_by_the_privileged_or_when_listed():
    dark = canary(0)  # a candidate at weight 0: no share of the traffic
    with pytest.raises(PinRefused, match="needs the admin token"):
        dark.route("user-1", pin_variant="candidate")
    with pytest.raises(PinRefused):
        dark.route(pin_version="v2")
    assert dark.route(pin_variant="candidate", privileged=True).variant.name == "candidate"
    listed = canary(0, pinnable=("candidate",))
    assert listed.route(pin_variant="candidate").variant.name == "candidate"
    shadowed = EndpointTable(
        "churn",
        (VariantSpec("stable", "churn:v1"), VariantSpec("shadow", "churn:v3", "shadow", 0, 1.0)),
    )
    with pytest.raises(PinRefused):
        shadowed.route(pin_variant="shadow")


def test_shadows_get_their_mirror_fraction_and_never_answer():
    table = EndpointTable(
        "churn",
        (
            VariantSpec("stable", "churn:v1"),
            VariantSpec("shadow", "churn:v3", "shadow", 0, 0.1),
        ),
    )
    rng = random.Random(5)
    decisions = [table.route(f"u{i}", rng=rng) for i in range(20_000)]
    assert {d.variant.name for d in decisions} == {"stable"}
    mirrored = sum(1 for d in decisions if d.shadows)
    assert abs(mirrored / 20_000 - 0.1) < 0.01


def test_changes_build_new_validated_tables():
    table = canary(10)
    assert table.with_weights({"candidate": 30}).variant("candidate").weight == 30
    assert table.variant("candidate").weight == 10  # the original is untouched
    with pytest.raises(RoutingError):
        table.with_weights({"stable": 0, "candidate": 0})
    with pytest.raises(UnknownVariant):
        table.with_weights({"ghost": 1})
    added = table.with_variant(VariantSpec("shadow", "churn:v3", "shadow", 0, 0.5))
    assert added.shadows[0].name == "shadow"
    with pytest.raises(RoutingError, match="already has"):
        added.with_variant(VariantSpec("shadow", "churn:v4", "shadow", 0, 0.5))
    with pytest.raises(RoutingError, match="distinct model version"):
        table.with_variant(VariantSpec("other", "churn:v2", "candidate", 0))
    assert [v.name for v in added.without_variant("candidate").variants] == ["stable", "shadow"]
    assert EndpointTable.from_dict("churn", added.to_dict()) == added


def test_whether_a_change_moves_keys_between_named_variants_is_what_routing_does():
    """Checked against routing itself, key by key. The arms' weights unchanged, a stable variant
    added after them, or a candidate removed before them, still moves keys between them."""
    policy = RoutingPolicy(key_header="x-user-id", salt="churn")
    arms = ("a", "b")

    def table(*variants: tuple[str, str, float], **changed) -> EndpointTable:
        specs = tuple(VariantSpec(n, f"churn:{n}", role, w) for n, role, w in variants)
        return EndpointTable("churn", specs, RoutingPolicy(**{**policy.__dict__, **changed}))

    start = table(("a", "stable", 50), ("b", "candidate", 50))
    with_old = table(("a", "stable", 40), ("old", "candidate", 20), ("b", "candidate", 40))
    cases = {
        "a stable variant added after them": (
            start,
            start.with_variant(VariantSpec("s", "churn:s", "stable", 20)),
        ),
        "a candidate added after them": (
            start,
            start.with_variant(VariantSpec("c", "churn:c", "candidate", 20)),
        ),
        "a candidate before them removed": (with_old, with_old.without_variant("old")),
        "the same shares in other numbers": (start, start.with_weights({"a": 1, "b": 1})),
        "their shares moved": (start, start.with_weights({"a": 45, "b": 55})),
    }
    keys = KEYS[:20_000]
    found = {}
    for name, (before, after) in cases.items():
        routed = [(before.route(k).variant.name, after.route(k).variant.name) for k in keys]
        found[name] = any(old != new and {old, new} <= set(arms) for old, new in routed)
        assert before.moves_users_between(after, arms) == found[name], name
    assert found == {
        "a stable variant added after them": True,
        "a candidate added after them": False,
        "a candidate before them removed": True,
        "the same shares in other numbers": False,
        "their shares moved": True,
    }
    assert start.moves_users_between(
        table(("a", "stable", 50), ("b", "candidate", 50), salt="x"), arms
    )
    keyless = table(("a", "stable", 50), ("b", "candidate", 50), key_header=None)
    assert not keyless.moves_users_between(keyless.with_weights({"a": 10}), arms)
