"""The data plane: endpoints, their variants and models, shared by the plain JSON and OIP APIs.

Both HTTP front ends decode a request, ask the data plane for a variant, and hand it tensors; the
data plane validates them against that variant's model and runs the model. Like MLServer's DataPlane,
it knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.config import GatewayConfig, LimitsConfig
from service.errors import NotFound
from service.model_pool import LoadedModel
from service.validation import check_inputs
from traffic.router import Router, UnknownVariant, Variant

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class Route:
    """The variant chosen for one request and the model version that will answer."""

    endpoint: str
    variant: Variant
    model: LoadedModel


class Endpoint:
    """One named endpoint: its router and the loaded model behind each variant."""

    def __init__(self, name: str, router: Router, models: dict[str, LoadedModel]) -> None:
        self.name = name
        self.router = router
        self.models = models

    def route(self, *, model_version: str | None = None) -> Route:
        """Pick a variant by weight, or the one serving ``model_version`` when the caller pins it."""
        if model_version is None:
            variant = self.router.choose()
        else:
            try:
                variant = self.router.pinned(model_version=model_version)
            except UnknownVariant as error:
                raise NotFound(f"endpoint {self.name!r}: {error}") from None
        return Route(self.name, variant, self.models[variant.name])

    @property
    def primary(self) -> LoadedModel:
        """The model that describes the endpoint when no version is named: the first stable one."""
        stable = next((v for v in self.router.variants if v.role == "stable"), None)
        return self.models[(stable or self.router.variants[0]).name]


class DataPlane:
    """Every endpoint of the gateway, and inference with validation."""

    def __init__(self, config: GatewayConfig, models: dict[str, LoadedModel]) -> None:
        self.limits: LimitsConfig = config.limits
        self.models = models
        self.endpoints: dict[str, Endpoint] = {}
        for name, endpoint in config.endpoints.items():
            variants = [
                Variant(v.name, v.model_version, v.weight, v.role) for v in endpoint.variants
            ]
            by_variant = {v.name: models[v.model] for v in endpoint.variants}
            self.endpoints[name] = Endpoint(name, Router(variants), by_variant)

    def endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            known = ", ".join(sorted(self.endpoints))
            raise NotFound(f"unknown endpoint {name!r}; endpoints: {known}") from None

    async def infer(self, route: Route, tensors: Tensors) -> Tensors:
        """Validate the tensors against the routed model, then run it."""
        rows = check_inputs(route.model.card, tensors, self.limits)
        return await route.model.infer(tensors, rows)
