"""The data plane: endpoints, their routing tables and models, shared by the plain JSON and OIP
APIs.

Both HTTP front ends decode a request, ask the data plane to route it, and hand it tensors; the data
plane validates them against the chosen variant's model and runs it. Like MLServer's DataPlane, it
knows nothing of HTTP. What it routes with is one immutable ``Snapshot`` (routing-state version,
tables, loaded models), replaced whole when the shared routing state changes, so a request sees
either the old state or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from service.config import FaultConfig, LimitsConfig
from service.errors import BadRequest, Forbidden, InferenceFailed, NotFound
from service.gateway.models import LoadedModel
from service.gateway.validation import check_inputs
from service.tensors import Tensors
from traffic.table import EndpointTable, PinRefused, RoutingError, VariantSpec


class Route(msgspec.Struct, frozen=True):
    """Where one request goes: the answering variant and model, why, and the shadows' copies."""

    endpoint: str
    variant: VariantSpec
    model: LoadedModel
    reason: str
    shadows: tuple[tuple[VariantSpec, LoadedModel], ...] = ()
    unit: str | None = None
    """Who sent it, for experiments: the digest of its routing key (None without a key)."""

    @property
    def pinned(self) -> bool:
        """The caller chose the variant: not a random draw of the traffic."""
        return self.reason == "pinned"


@dataclass(frozen=True)
class Snapshot:
    """Everything routing needs, at one routing-state version."""

    version: int
    tables: Mapping[str, EndpointTable]
    models: Mapping[str, LoadedModel]


class DataPlane:
    """Every endpoint of the gateway: routing, validation, inference."""

    def __init__(
        self,
        limits: LimitsConfig,
        snapshot: Snapshot,
        faults: Mapping[tuple[str, str], FaultConfig] | None = None,
    ) -> None:
        self.limits = limits
        self.snapshot = snapshot
        self.faults = dict(faults or {})

    def install(self, snapshot: Snapshot) -> None:
        """Switch to a new routing state (one assignment: atomic for the event loop)."""
        self.snapshot = snapshot

    def table(self, endpoint: str) -> EndpointTable:
        try:
            return self.snapshot.tables[endpoint]
        except KeyError:
            known = ", ".join(sorted(self.snapshot.tables))
            raise NotFound(f"unknown endpoint {endpoint!r}; endpoints: {known}") from None

    def model(self, variant: VariantSpec) -> LoadedModel:
        return self.snapshot.models[variant.model]

    def route(
        self,
        endpoint: str,
        key: str | None = None,
        *,
        pin_variant: str | None = None,
        pin_version: str | None = None,
        privileged: bool = False,
    ) -> Route:
        """Route one request: 400 for an unknown or disallowed pin or a missing required key,
        403 for a pin of a dark variant by a caller without the right to."""
        snapshot = self.snapshot
        table = self.table(endpoint)
        try:
            assignment = table.route(
                key, pin_variant=pin_variant, pin_version=pin_version, privileged=privileged
            )
        except PinRefused as error:
            raise Forbidden(str(error)) from None
        except RoutingError as error:
            raise BadRequest(str(error)) from None
        models = snapshot.models
        shadows = tuple((s, models[s.model]) for s in assignment.shadows)
        return Route(
            endpoint,
            assignment.variant,
            models[assignment.variant.model],
            assignment.reason,
            shadows,
            assignment.unit,
        )

    async def infer(self, route: Route, tensors: Tensors) -> Tensors:
        """Validate the tensors against the routed model, then run it."""
        return await self.run(route.endpoint, route.variant, route.model, tensors)

    async def run(
        self, endpoint: str, variant: VariantSpec, model: LoadedModel, tensors: Tensors
    ) -> Tensors:
        rows = check_inputs(model.card, tensors, self.limits)
        faults = self.faults.get((endpoint, variant.name))
        if faults is not None:
            await asyncio.sleep(faults.delay_ms / 1000)
            if random.random() < faults.error_rate:
                raise InferenceFailed(f"injected fault in variant {variant.name!r}")
        return await model.infer(tensors, rows)
