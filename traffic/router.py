"""Choosing a variant for a request: by weight, or pinned by the caller.

An endpoint's variants each have a weight and a role. Shadows never answer a caller. A pinned request
names a variant (by variant name or model version) and gets exactly that one, or ``UnknownVariant``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["stable", "candidate", "shadow"]


class UnknownVariant(LookupError):
    """A pin names no variant of the endpoint."""


@dataclass(frozen=True)
class Variant:
    """A routable variant: its name, the model version it serves, its weight and role."""

    name: str
    model_version: str
    weight: float
    role: Role


class Router:
    """Picks variants for one endpoint. Immutable: a weight change builds a new ``Router``."""

    def __init__(self, variants: Sequence[Variant], rng: random.Random | None = None) -> None:
        self.variants = tuple(variants)
        self._serving = [v for v in self.variants if v.role != "shadow" and v.weight > 0]
        if not self._serving:
            raise ValueError("an endpoint needs at least one non-shadow variant with weight > 0")
        self._weights = [v.weight for v in self._serving]
        self._rng = rng or random.Random()

    def choose(self) -> Variant:
        """A serving variant drawn in proportion to the weights."""
        if len(self._serving) == 1:
            return self._serving[0]
        return self._rng.choices(self._serving, weights=self._weights)[0]

    def pinned(self, *, name: str | None = None, model_version: str | None = None) -> Variant:
        """The variant with this name or model version (shadows included: pinning is explicit)."""
        for variant in self.variants:
            if (name is not None and variant.name == name) or (
                model_version is not None and variant.model_version == model_version
            ):
                return variant
        wanted = name if name is not None else model_version
        known = ", ".join(f"{v.name} ({v.model_version})" for v in self.variants)
        raise UnknownVariant(f"no variant {wanted!r}; this endpoint has {known}")
