"""Loaded model versions: one onnxruntime session and one batcher each, keyed by registry tag."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import registry
from service.batching import Batcher
from service.config import GatewayConfig
from service.metrics import GatewayMetrics
from service.model_card import MODEL_FILE, ModelCard
from service.runtime import ModelSession, resolve_providers

log = logging.getLogger("gateway.models")

Tensors = dict[str, np.ndarray]


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


@dataclass(frozen=True)
class LoadPlan:
    """What to load and where: checked up front, so a missing model or device fails start-up fast."""

    paths: dict[str, Path]
    cards: dict[str, ModelCard]
    providers: list[str]


def plan_models(config: GatewayConfig) -> LoadPlan:
    """Find every model version the config names in the store and resolve the device."""
    tags = config.model_tags
    paths = {tag: registry.model_dir(tag) for tag in tags}
    cards = {tag: registry.load_card(tag) for tag in tags}
    providers = resolve_providers(config.device, paths[tags[0]] / MODEL_FILE)
    return LoadPlan(paths, cards, providers)


def load_models(
    config: GatewayConfig, plan: LoadPlan, metrics: GatewayMetrics
) -> dict[str, LoadedModel]:
    """Load and warm up every planned model version; log the provider each one really uses."""
    batching = config.batching
    loaded: dict[str, LoadedModel] = {}
    for tag, card in plan.cards.items():
        session = ModelSession(
            plan.paths[tag] / MODEL_FILE, card, plan.providers, config.runtime.intra_op_threads
        )
        session.warm_up(config.runtime.warmup_rows)
        stack = batching.enabled and _can_stack(card)
        batcher = Batcher(
            session.run,
            max_batch_size=batching.max_batch_size if stack else 1,
            max_wait_ms=batching.max_wait_ms if stack else 0.0,
            max_queue=batching.max_queue,
            concurrency=batching.concurrency,
            observe_batch=metrics.batch_observer(card.name, card.version),
            name=tag,
        )
        metrics.model_loaded.labels(card.name, card.version, session.provider).set(1)
        log.info(
            "model %s loaded on %s (sha256 %s, batching %s)",
            tag,
            session.provider,
            card.sha256[:12],
            f"up to {batching.max_batch_size} rows" if stack else "off",
        )
        loaded[tag] = LoadedModel(card, session, batcher)
    return loaded
