"""Loaded model versions: one onnxruntime session and one batcher each, keyed by registry tag.

The device is resolved once per worker (``ModelLoader``); after that, models load one at a time as
the routing state needs them: at start-up, and when an admin adds a variant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service import registry
from service.config import GatewayConfig
from service.errors import ConfigError
from service.gateway.batching import Batcher, RunCost
from service.gateway.metrics import GatewayMetrics
from service.model_card import MODEL_FILE, ModelCard
from service.runtime import ModelSession, resolve_providers
from service.tensors import Tensors
from traffic.table import EndpointTable

log = logging.getLogger("gateway.models")


@dataclass
class LoadedModel:
    """A model version ready to serve."""

    card: ModelCard
    session: ModelSession
    batcher: Batcher

    @property
    def provider(self) -> str:
        return self.session.provider

    async def infer(self, inputs: Tensors, rows: int) -> Tensors:
        """Run through the batcher (queued, possibly stacked with other requests' rows)."""
        return await self.batcher.submit(inputs, rows)


def _can_stack(card: ModelCard) -> bool:
    """Rows of several requests can be stacked only if just the first dimension varies."""
    specs = card.inputs + card.outputs
    return all(s.batched and -1 not in s.shape[1:] for s in specs)


def check_models(config: GatewayConfig, tags: list[str]) -> list[str]:
    """Check every tag is in the store and the config's endpoints can serve their models, and
    resolve the device; returns the providers to use."""
    if not tags:
        raise ConfigError("no model versions to serve")
    for tag in tags:
        registry.load_card(tag)
    for table in config.tables().values():
        check_variants_agree(table)
    return resolve_providers(config.device, registry.model_dir(tags[0]) / MODEL_FILE)


def check_variants_agree(table: EndpointTable) -> None:
    """``ConfigError`` unless every variant's model takes the requests the first one takes and
    serves the same task. A caller does not choose its variant: a well-formed request would be a
    400 for the share routed to a variant that takes other inputs (a 400 it cannot fix), and every
    copy sent to such a shadow would fail."""
    first, *others = table.variants
    expected = registry.load_card(first.model)
    for variant in others:
        difference = expected.difference_for_callers(registry.load_card(variant.model))
        if difference is not None:
            raise ConfigError(
                f"endpoint {table.endpoint!r}: variant {variant.name!r} ({variant.model}) cannot "
                f"serve beside variant {first.name!r} ({first.model}): it {difference}, and the "
                f"endpoint's callers would be refused by it"
            )


class ModelLoader:
    """Loads model versions from the store on the device resolved once for this worker."""

    def __init__(
        self, config: GatewayConfig, providers: list[str], metrics: GatewayMetrics
    ) -> None:
        self.config = config
        self.providers = providers
        self.metrics = metrics

    def load(self, tag: str) -> LoadedModel:
        """Load and warm one model version; log the provider it really uses."""
        directory = registry.model_dir(tag)
        card = registry.load_card(tag)
        runtime, batching = self.config.runtime, self.config.batching
        try:
            session = ModelSession(
                directory / MODEL_FILE,
                card,
                self.providers,
                runtime.intra_op_threads,
                runtime.intra_op_spinning,
            )
            session.warm_up(runtime.warmup_rows)
            cost = RunCost.measure(session.run, session.zeros, batching.max_batch_size)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ConfigError(f"model {tag} does not load: {error}") from None
        stack = batching.enabled and _can_stack(card)
        batcher = Batcher(
            session.run,
            max_batch_size=batching.max_batch_size if stack else 1,
            max_wait_ms=batching.max_wait_ms if stack else 0.0,
            max_queue=batching.max_queue,
            concurrency=batching.concurrency,
            observe_batch=self.metrics.batch_observer(card.name, card.version),
            name=tag,
            cost=cost,
        )
        self.metrics.model_loaded.labels(card.name, card.version, session.provider).set(1)
        log.info(
            "model %s loaded on %s (sha256 %s, batching %s)",
            tag,
            session.provider,
            card.sha256[:12],
            f"up to {batching.max_batch_size} rows" if stack else "off",
        )
        return LoadedModel(card, session, batcher)
