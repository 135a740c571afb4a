"""Keeping every worker on the same routing state, and changing it safely.

At start a worker adopts the stored state, with the endpoints the config changed since the state
was made from it taken from the config (service/state.py ``from_config``; audited). Afterwards each worker polls the store's version every
``POLL_S`` seconds; on a new version it loads any model the new tables need (off the event loop;
traffic moves only once the model is warm), then installs the new snapshot in one step. A change
made through the admin API is validated, loaded in the worker that took it, saved with
compare-and-swap, audited, and installed there at once; the other workers follow within ``POLL_S``.
On PostgreSQL every worker of every replica also listens for the saved version (LISTEN/NOTIFY) and
reads it at once; polling stays, every ``NOTIFIED_POLL_S``, as the safety net for a lost
notification or a listener reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import anyio

from service.errors import ConfigError, Conflict, GatewayError, Unavailable
from service.exposition import drop_series
from service.gateway.dataplane import DataPlane, Snapshot
from service.gateway.metrics import GatewayMetrics
from service.gateway.models import LoadedModel, ModelLoader, check_variants_agree
from service.logs import Throttled
from service.state import model_tags
from storage.database import StoreUnavailable
from storage.postgres import listen_forever
from traffic.store import (
    ROUTING_CHANNEL,
    RoutingState,
    StateStore,
    Swap,
    VersionConflict,
    audit_entry,
    compare_and_swap,
)
from traffic.table import EndpointTable, RoutingError

log = logging.getLogger("gateway.routing")
POLL_S = 0.25
NOTIFIED_POLL_S = 1.0
MAX_BACKOFF_S = 5.0
GRACE_S = 30.0
"""How long a model no table uses stays loaded, for requests routed to it just before a change."""

Tables = Mapping[str, EndpointTable]


class RoutingControl:
    """One worker's side of the shared routing state."""

    def __init__(
        self,
        store: StateStore,
        loader: ModelLoader,
        dataplane: DataPlane,
        metrics: GatewayMetrics,
        notifications_dsn: str | None = None,
    ) -> None:
        self.store = store
        self.loader = loader
        self.dataplane = dataplane
        self.metrics = metrics
        self.notifications_dsn = notifications_dsn
        """Where to LISTEN for saved versions (PostgreSQL's DSN); None: polling alone."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    @staticmethod
    def snapshot(state: RoutingState, models: Mapping[str, LoadedModel]) -> Snapshot:
        needed = model_tags(state.tables)
        return Snapshot(state.version, dict(state.tables), {t: models[t] for t in needed})

    def export(self, snapshot: Snapshot) -> None:
        """Export a snapshot's weights and version as metrics."""
        for name, table in snapshot.tables.items():
            for variant in table.variants:
                self.metrics.variant_weight.labels(name, variant.name).set(
                    variant.mirror * 100 if variant.role == "shadow" else variant.weight
                )
                self.metrics.prepare_variant(name, variant.name, variant.model_version)
        self.metrics.routing_version.set(snapshot.version)

    def publish(self, snapshot: Snapshot) -> None:
        """Install a snapshot, export it, and retire models no table uses any more."""
        previous = self.dataplane.snapshot
        self.dataplane.install(snapshot)
        self.export(snapshot)
        self._drop_removed_variants(previous, snapshot)
        retired = [m for t, m in previous.models.items() if t not in snapshot.models]
        if retired:
            asyncio.get_running_loop().call_later(GRACE_S, self._retire, retired)

    def _drop_removed_variants(self, previous: Snapshot, snapshot: Snapshot) -> None:
        """Take the weight of each variant no table has any more off /metrics: a removed
        canary's last weight would otherwise stay on the dashboard for as long as the worker
        runs."""
        kept = {(name, v.name) for name, table in snapshot.tables.items() for v in table.variants}
        for name, table in previous.tables.items():
            for variant in table.variants:
                if (name, variant.name) not in kept:
                    drop_series(self.metrics.variant_weight, (name, variant.name))

    def _retire(self, models: list[LoadedModel]) -> None:
        in_use = self.dataplane.snapshot.models.values()
        for model in models:
            if all(model is not m for m in in_use):
                asyncio.ensure_future(model.batcher.close())
                key = (model.card.name, model.card.version, model.provider)
                drop_series(self.metrics.model_loaded, key)

    def _load_missing(self, tables: Tables) -> dict[str, LoadedModel]:
        """The installed models plus any the tables need that are not loaded yet (blocking: call
        it off the event loop)."""
        models = dict(self.dataplane.snapshot.models)
        for tag in model_tags(tables):
            if tag not in models:
                models[tag] = self.loader.load(tag)
        return models

    async def follow(self) -> None:
        """Poll the store forever and install each new version (a supervised background task).
        While the store cannot be read (locked, gone), polls back off to ``MAX_BACKOFF_S`` and
        the failure is logged once a minute at most, then its end."""
        failures = Throttled(log, every_s=60.0)
        poll_s = POLL_S if self.notifications_dsn is None else NOTIFIED_POLL_S
        delay = poll_s
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                version = await anyio.to_thread.run_sync(self.store.current_version)
                if version != self.dataplane.snapshot.version:
                    await self.refresh()
            except Exception as error:  # keep following: a bad moment must not stop updates
                delay = min(delay * 2, MAX_BACKOFF_S)
                failures.warning("cannot follow the routing state (%s); retrying", error)
                continue
            failures.recovered("following the routing state again")
            delay = poll_s

    async def listen(self) -> None:
        """Wake ``follow`` the moment any process saves a routing version, and after each
        (re)connection of the listener, which may have missed some (a supervised background
        task where ``notifications_dsn`` is set)."""
        assert self.notifications_dsn is not None
        await listen_forever(
            self.notifications_dsn, ROUTING_CHANNEL, lambda _: self._wake.set(), self._wake.set
        )

    async def refresh(self) -> None:
        async with self._lock:
            state = await anyio.to_thread.run_sync(self.store.load)
            if state is None or state.version == self.dataplane.snapshot.version:
                return
            models = await anyio.to_thread.run_sync(self._load_missing, state.tables)
            self.publish(self.snapshot(state, models))
            log.info("routing state version %d installed", state.version)

    async def change(
        self,
        client: str,
        action: str,
        endpoint: str,
        detail: Mapping,
        mutate: Callable[[RoutingState], Tables],
        source: str | None = None,
        declared: Tables | None = None,
    ) -> Swap:
        """Make new tables of the current state with ``mutate``: validate, load, save (CAS), audit, install
        (``source`` and ``declared``: the config a reload made it from, and its tables);
        the state it read and the state it saved (None when the change changed nothing: no new
        version, no audit entry, counted as "unchanged"). 400 for a change the tables or models refuse,
        409 when the state kept moving underneath, 503 when the store is locked by another
        process for too long (nothing changed then)."""
        models: dict[str, LoadedModel] = {}

        def changed(state: RoutingState | None) -> RoutingState:
            """Runs off the event loop: the new tables, with every model they use loaded."""
            assert state is not None, "a worker initialises the routing state before serving"
            tables = mutate(state)
            for name, table in tables.items():
                if endpoint in ("*", name):
                    check_variants_agree(table)
            models.update(self._load_missing(tables))
            return RoutingState(0, source or state.source, tables, declared)

        async with self._lock:
            try:
                swap = await anyio.to_thread.run_sync(compare_and_swap, self.store, changed)
                saved = swap.after
                if saved is None:  # nothing to save or audit: the state already is so
                    self.metrics.admin_changes.labels(action, "unchanged").inc()
                    if swap.before.version != self.dataplane.snapshot.version:
                        self.publish(self.snapshot(swap.before, models))  # answer it as it is
                    return swap
                entry = audit_entry(client, action, endpoint, {**detail, "version": saved.version})
                await anyio.to_thread.run_sync(self.store.append_audit, entry)
            except (RoutingError, ConfigError) as error:
                self.metrics.admin_changes.labels(action, "refused").inc()
                raise GatewayError(str(error)) from None
            except VersionConflict:
                self.metrics.admin_changes.labels(action, "refused").inc()
                raise Conflict("the routing state kept changing underneath; try again") from None
            except StoreUnavailable as error:
                self.metrics.admin_changes.labels(action, "refused").inc()
                log.warning("%s on %s refused: %s", action, endpoint, error)
                message = f"{error.summary}; nothing was changed"
                raise Unavailable(message, retry_after_s=1) from None
            self.metrics.admin_changes.labels(action, "applied").inc()
            self.publish(self.snapshot(saved, models))
            log.info(
                "%s on %s by %s: routing state version %d", action, endpoint, client, saved.version
            )
            return swap
