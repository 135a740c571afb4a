"""An endpoint's routing table: its variants, how requests are keyed, and the routing decision.

A table is immutable: every change (weights, a variant added or removed) builds a new, validated
table, so a worker swaps tables atomically and a request never sees half a change. ``route`` is the
whole decision for one request: the pinned variant if the caller pins one, else the owner of the
key's bucket, else a weighted random draw; plus the shadows that get a copy.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import msgspec

from traffic.buckets import BUCKETS, BucketRange, allocate, bucket_of_digest, key_digest, owner

Role = Literal["stable", "candidate", "shadow"]
ROLES = ("stable", "candidate", "shadow")


class RoutingError(ValueError):
    """A request or a change the table refuses; the message says why."""


class UnknownVariant(RoutingError):
    """A pin or a change names no variant of the endpoint."""


class PinRefused(RoutingError):
    """A caller without the right to pins a variant that takes no share of the traffic."""


@dataclass(frozen=True)
class VariantSpec:
    """One variant: the model version it serves, its role, weight (share of keyed and unkeyed
    traffic, for stable and candidate) and mirror (share of requests copied to it, for shadows)."""

    name: str
    model: str
    role: Role = "stable"
    weight: float = 100.0
    mirror: float = 0.0

    @property
    def model_version(self) -> str:
        return self.model.split(":", 1)[1]

    @property
    def serving(self) -> bool:
        """Whether it takes a share of the traffic (a stable or candidate variant with weight)."""
        return self.role != "shadow" and self.weight > 0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "role": self.role,
            "weight": self.weight,
            "mirror": self.mirror,
        }


@dataclass(frozen=True)
class RoutingPolicy:
    """How an endpoint's requests are keyed and whether callers may pin a variant. A variant
    that takes no share of the traffic (weight 0, a shadow, a rolled-back candidate) is dark:
    only a privileged caller (the admin token) pins it, unless it is listed in ``pinnable``."""

    key_header: str | None = None
    key_field: str | None = None
    require_key: bool = False
    allow_pinning: bool = True
    salt: str = ""
    pinnable: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "key_header": self.key_header,
            "key_field": self.key_field,
            "require_key": self.require_key,
            "allow_pinning": self.allow_pinning,
            "salt": self.salt,
            "pinnable": list(self.pinnable),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> RoutingPolicy:
        return cls(**{**data, "pinnable": tuple(data.get("pinnable", ()))})


class Assignment(msgspec.Struct, frozen=True):
    """Where one request goes: the answering variant, why, and the shadows that get a copy."""

    variant: VariantSpec
    reason: Literal["pinned", "key", "random"]
    shadows: tuple[VariantSpec, ...] = ()
    unit: str | None = None
    """For a keyed request, the hex digest of its salted key: who it is, without the key."""


def check_variants(variants: Iterable[VariantSpec]) -> None:
    """Raise ``RoutingError`` unless the variants make a servable endpoint."""
    variants = list(variants)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise RoutingError(f"variant names must be unique, got {names}")
    versions = [v.model_version for v in variants]
    if len(set(versions)) != len(versions):
        raise RoutingError(
            f"each variant must serve a distinct model version (pins name versions), got {versions}"
        )
    for v in variants:
        if v.role not in ROLES:
            raise RoutingError(f"variant {v.name!r}: role must be one of {ROLES}")
        if not 0 <= v.weight <= 100:
            raise RoutingError(f"variant {v.name!r}: weight must be between 0 and 100")
        if not 0 <= v.mirror <= 1:
            raise RoutingError(f"variant {v.name!r}: mirror must be between 0 and 1")
        if v.role == "shadow" and v.weight:
            raise RoutingError(f"variant {v.name!r}: a shadow takes no weight; set mirror (0-1)")
        if v.role != "shadow" and v.mirror:
            raise RoutingError(f"variant {v.name!r}: only shadows have a mirror fraction")
    if sum(v.weight for v in variants if v.role != "shadow") <= 0:
        raise RoutingError("the weights of the stable and candidate variants must add up to > 0")


@dataclass(frozen=True)
class EndpointTable:
    """The routing table of one endpoint (immutable; ``with_*`` methods return new tables)."""

    endpoint: str
    variants: tuple[VariantSpec, ...]
    policy: RoutingPolicy = RoutingPolicy()
    ranges: tuple[BucketRange, ...] = field(init=False, repr=False, compare=False)
    shadows: tuple[VariantSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_variants(self.variants)
        serving = [
            (v.name, v.weight, v.role == "candidate") for v in self.variants if v.role != "shadow"
        ]
        object.__setattr__(self, "ranges", allocate(serving))
        shadows = tuple(v for v in self.variants if v.role == "shadow" and v.mirror > 0)
        object.__setattr__(self, "shadows", shadows)

    @property
    def salt(self) -> str:
        return self.policy.salt or self.endpoint

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise UnknownVariant(
            f"endpoint {self.endpoint!r} has no variant {name!r}; it has "
            f"{[v.name for v in self.variants]}"
        )

    def by_version(self, model_version: str) -> VariantSpec:
        """The variant serving ``model_version``, in any case: model stores (BentoML's) lowercase
        versions, and a caller may pin one as it was registered."""
        for v in self.variants:
            if v.model_version.lower() == model_version.lower():
                return v
        raise UnknownVariant(
            f"endpoint {self.endpoint!r} has no model version {model_version!r}; "
            f"it has {[v.model_version for v in self.variants]}"
        )

    def route(
        self,
        key: str | None = None,
        *,
        pin_variant: str | None = None,
        pin_version: str | None = None,
        privileged: bool = False,
        rng: random.Random | None = None,
    ) -> Assignment:
        """Decide where one request goes (see the module docstring). ``privileged``: the caller
        may pin any variant, even where pinning is off or the variant is dark."""
        rng = rng or random
        shadows = tuple(s for s in self.shadows if rng.random() < s.mirror)
        if pin_variant is not None or pin_version is not None:
            if not (self.policy.allow_pinning or privileged):
                raise RoutingError(f"endpoint {self.endpoint!r} does not allow pinning a variant")
            pinned = (
                self.variant(pin_variant)
                if pin_variant is not None
                else self.by_version(pin_version)
            )
            if not (pinned.serving or privileged or pinned.name in self.policy.pinnable):
                raise PinRefused(
                    f"variant {pinned.name!r} of {self.endpoint!r} takes no share of the traffic: "
                    f"pinning it needs the admin token"
                )
            return Assignment(pinned, "pinned", tuple(s for s in shadows if s is not pinned))
        if key is not None:
            digest = key_digest(self.salt, key)
            name = owner(self.ranges, bucket_of_digest(digest))
            return Assignment(self.variant(name), "key", shadows, digest.hex())
        if self.policy.require_key:
            source = self.policy.key_header or self.policy.key_field
            raise RoutingError(f"endpoint {self.endpoint!r} needs a routing key ({source})")
        name = owner(self.ranges, int(rng.random() * BUCKETS))
        return Assignment(self.variant(name), "random", shadows)

    def with_weights(self, weights: Mapping[str, float]) -> EndpointTable:
        """The same table with new weights for the named variants."""
        for name in weights:
            if self.variant(name).role == "shadow":
                raise RoutingError(f"variant {name!r} is a shadow: set its mirror, not a weight")
        return replace(
            self,
            variants=tuple(
                replace(v, weight=float(weights.get(v.name, v.weight))) for v in self.variants
            ),
        )

    def with_variant(self, spec: VariantSpec) -> EndpointTable:
        if any(v.name == spec.name for v in self.variants):
            raise RoutingError(f"endpoint {self.endpoint!r} already has a variant {spec.name!r}")
        return replace(self, variants=(*self.variants, spec))

    def without_variant(self, name: str) -> EndpointTable:
        self.variant(name)
        return replace(self, variants=tuple(v for v in self.variants if v.name != name))

    def moves_users_between(self, later: EndpointTable, variants: Collection[str]) -> bool:
        """Whether some routing key that goes to one of ``variants`` here goes to another of
        them in ``later``: where the key comes from or the salt changed (every key hashes anew),
        or a bucket changed owner among them. Adding or removing any variant can do that, the
        named ones' weights unchanged (a stable variant added after them takes buckets from both
        ends). Without a key no caller keeps a variant, so none moves."""
        keyed = (self.policy.key_header, self.policy.key_field, self.policy.salt)
        if keyed != (later.policy.key_header, later.policy.key_field, later.policy.salt):
            return True
        if self.policy.key_header is None and self.policy.key_field is None:
            return False
        return any(
            old.variant != new.variant and max(old.start, new.start) < min(old.stop, new.stop)
            for old in self.ranges
            if old.variant in variants
            for new in later.ranges
            if new.variant in variants
        )

    def to_dict(self) -> dict:
        return {"policy": self.policy.to_dict(), "variants": [v.to_dict() for v in self.variants]}

    @classmethod
    def from_dict(cls, endpoint: str, data: Mapping) -> EndpointTable:
        return cls(
            endpoint,
            tuple(VariantSpec(**v) for v in data["variants"]),
            RoutingPolicy.from_dict(data["policy"]),
        )
