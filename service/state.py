"""The shared routing state both processes start from: where it lives and how it is first made.

A gateway worker adopts it at start (service/gateway/routing.py); the monitor reads it to know the
endpoints and to drive rollouts (service/monitor/rollouts.py). The store itself is
traffic/store.py's; this module only says where it is (a file in ``data_dir``, or the PostgreSQL
database named by the environment variable ``state.dsn_env``) and what goes in first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from monitors.store import MonitorStore
from service.config import GatewayConfig
from service.errors import ConfigError
from storage.postgres import PostgresDatabase
from traffic.store import RoutingState, SQLStateStore, StateStore, audit_entry, compare_and_swap
from traffic.table import EndpointTable

STATE_FILE = "routing.sqlite3"
"""The shared routing state's file in the data directory (SQLite default store)."""
MONITOR_FILE = "monitor.sqlite3"
"""The monitor's records, labels and rewards in the data directory (SQLite default store)."""


def postgres_database(
    config: GatewayConfig, max_connections: int | None = None
) -> PostgresDatabase:
    """A pool (of ``state.pool_size`` connections unless told) on the database the DSN in
    ``$<state.dsn_env>`` names (``StoreUnavailable`` while it cannot be reached)."""
    dsn = os.environ.get(config.state.dsn_env, "").strip()
    if not dsn:
        raise ConfigError(
            f"state.backend is postgres, but ${config.state.dsn_env} (the database's DSN) is not set"
        )
    return PostgresDatabase(dsn, max_connections or config.state.pool_size)


def open_state_store(config: GatewayConfig) -> SQLStateStore:
    """The routing state store the config names, its schema brought up to date."""
    if config.state.backend == "postgres":
        return SQLStateStore(postgres_database(config))
    return SQLStateStore.open_sqlite(config.data_dir / STATE_FILE)


def model_tags(tables: Mapping[str, EndpointTable]) -> list[str]:
    """Every model version the tables use, each once."""
    return list(dict.fromkeys(v.model for t in tables.values() for v in t.variants))


def initial_state(config: GatewayConfig, store: StateStore) -> RoutingState:
    """The stored state, or the config's when nothing is stored or the config's endpoints changed
    (when several workers start at once, one writes it and the others adopt theirs)."""
    source = config.routing_hash()

    def from_config(stored: RoutingState | None) -> RoutingState | None:
        if stored is not None and stored.source == source:
            return None
        return RoutingState(0, source, config.tables())

    swap = compare_and_swap(store, from_config)
    if swap.after is None:
        return swap.before
    reason = "first start" if swap.before is None else "config endpoints changed"
    store.append_audit(audit_entry("config", "initialize", "*", {"reason": reason}))
    return swap.after


@dataclass(frozen=True)
class MonitorStores:
    """What a monitor stores in: its records, labels and rewards; the shared state; and the
    shared state again for the leader lease alone, on a connection of its own (PostgreSQL), so
    that renewing the lease never waits behind ingestion or an analysis holding the pool."""

    records: MonitorStore
    state: SQLStateStore
    leases: SQLStateStore

    def close(self) -> None:
        for database in {
            id(d): d for d in (self.records.db, self.state.db, self.leases.db)
        }.values():
            database.close()


def open_stores(config: GatewayConfig) -> MonitorStores:
    """A monitor's stores on the backend the config names, their schemas brought up to date."""
    if config.state.backend == "postgres":
        database = postgres_database(config)
        leases = SQLStateStore(postgres_database(config, max_connections=1))
        return MonitorStores(MonitorStore(database), SQLStateStore(database), leases)
    max_db = config.monitor.max_db_mb
    records = MonitorStore.open_sqlite(
        config.data_dir / MONITOR_FILE, None if max_db is None else int(max_db * 2**20)
    )
    state = SQLStateStore.open_sqlite(config.data_dir / STATE_FILE)
    return MonitorStores(records, state, state)
