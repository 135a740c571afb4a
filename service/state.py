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
    """The stored state, with the endpoints the config changed since it was made (``from_config``;
    every endpoint when nothing is stored). When several workers start at once, one writes it
    and the others adopt theirs."""
    source = config.routing_hash()
    from_file: list[str] = []

    def initialise(stored: RoutingState | None) -> RoutingState | None:
        if stored is not None and stored.source == source and stored.declared is not None:
            return None
        tables, from_file[:] = from_config(config, stored)
        return RoutingState(0, source, tables, config.tables())

    swap = compare_and_swap(store, initialise)
    if swap.after is None:
        return swap.before
    if swap.before is None or from_file:
        reason = "first start" if swap.before is None else "config endpoints changed"
        detail = {"reason": reason, "from_file": from_file}
        store.append_audit(audit_entry("config", "initialize", "*", detail))
    return swap.after


def from_config(
    read: GatewayConfig, stored: RoutingState | None
) -> tuple[dict[str, EndpointTable], list[str]]:
    """The tables ``read`` (gateway.yaml as it is now, at a start or a reload) makes of the
    ``stored`` state, and the endpoints it took from the file (sorted). Only the endpoints the
    file changed since the state was made from it: one it left as it was keeps its stored
    table, with what changed at run time (a rollout's promotion, weights set through the admin
    API). A reload that only added an endpoint undid those: a promoted candidate went back to
    its old weight. Where the state does not say what its config declared (made by a release
    before this one), every endpoint is the file's."""
    declared = read.tables()
    if stored is None:
        return declared, sorted(declared)
    if stored.source == read.routing_hash():
        return dict(stored.tables), []
    before = stored.declared or {}
    tables, from_file = {}, []
    for name, table in declared.items():
        if name in stored.tables and before.get(name) == table:
            tables[name] = stored.tables[name]
        else:
            tables[name] = table
            from_file.append(name)
    return tables, sorted(from_file)


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
