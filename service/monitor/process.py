"""One monitor process: its store, analysis runner, rollouts, webhook outbox and their background
work, wired together (the monitor's counterpart of service/gateway/process.py's ``Gateway``).

The monitor takes records and labels from every gateway worker and replica, runs the analysis,
decides rollouts and announces them. Every one of its routes needs the monitor token; started
without one, it serves only on a loopback address (and says so), and refuses to start on any other.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from monitors.records import PredictionRecord
from monitors.reports import ReportArchive
from service import registry
from service.codecs import is_finite_number
from service.config import GatewayConfig
from service.errors import ConfigError
from service.labels import SCALARS
from service.model_card import ModelCard
from service.monitor.evidence import EvidenceGatherer
from service.monitor.experiments import ExperimentReadouts
from service.monitor.leadership import Leadership
from service.monitor.metrics import MonitorMetrics
from service.monitor.notifier import DriftAlarm, Notifier
from service.monitor.priority import SessionShare, session_niceness_setter
from service.monitor.reasons import StepReasons
from service.monitor.rollouts import RolloutService
from service.monitor.runs import MonitorRunner
from service.names import RequestIds, endpoint_of, is_name, is_tag, is_unit
from service.retries import with_retries
from service.secrets import Secrets, check_exposure, load_secrets
from service.state import open_stores
from traffic.table import EndpointTable

log = logging.getLogger("gateway.monitor")
REPORTS_DIR = "reports"
OUTCOMES = ("ok", "error", "rejected")
KNOWN_GRACE_S = 3600.0
"""How long a variant that left the routing state may still send records (the last batches)."""
REFRESH_S = 1.0
"""The routing state is read again at most this often, when a record names a variant not seen in
it within this time: one it never had (a caller's junk costs one read a second at most), or one
it had (to learn whether it is still there). Sooner for a record answered after the last read
began: its variant may have been added since (``KnownVariants.knows``)."""


def listening_host() -> str | None:
    """The address this BentoML worker's socket is bound to (its ``--fd``), if it has one."""
    if "--fd" not in sys.argv:
        return None
    descriptor = int(sys.argv[sys.argv.index("--fd") + 1])
    with socket.socket(fileno=os.dup(descriptor)) as bound:
        return bound.getsockname()[0]


def fits_its_model(record: PredictionRecord, card: ModelCard | None) -> bool:
    """Whether a record has the shape of an answer of its model (``card``; None once the model
    left the store): one prediction per row, each a value the model gives (one of its classes,
    or a number, null where it was not finite), input rows as wide as its features, one
    prediction per row from each shadow; a record its variant did not answer carries none.

    The analysis lays a variant's records side by side, so one that did not fit would fail
    every run of that variant for as long as it is kept (days)."""
    predictions, inputs = record.predictions, record.inputs
    if record.outcome != "ok":
        return not predictions and inputs is None and not record.shadow
    if card is None:
        width = len(inputs[0]) if inputs else None
        gives = _is_value
    elif card.task == "regression":
        width, gives = len(card.feature_names), _is_number_or_null
    else:
        classes = {str(c) for c in card.class_labels}
        width, gives = len(card.feature_names), lambda value: str(value) in classes
    return (
        bool(predictions)
        and all(map(gives, predictions))
        and (
            inputs is None
            or (len(inputs) == len(predictions) and all(len(row) == width for row in inputs))
        )
        and all(
            len(shadow) == len(predictions) and all(map(_is_value, shadow))
            for shadow in record.shadow.values()
        )
    )


def _is_value(value: object) -> bool:
    return value is None or isinstance(value, SCALARS)


def _is_number_or_null(value: object) -> bool:
    return value is None or is_finite_number(value)


class KnownVariants:
    """Endpoint and variant names the routing state has, or had within ``KNOWN_GRACE_S``: the
    only ones records may carry (a name nobody configured never reaches a table or a path).
    Asked by the threads that store records, several at once."""

    def __init__(
        self,
        tables: Callable[[], Mapping[str, EndpointTable]],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tables = tables
        self.clock = clock
        self.wall = wall
        """The clock records' ``at`` is on (the gateways')."""
        self._seen: dict[tuple[str, str], float] = {}
        """When each name was last in the routing state."""
        self._read_at = -math.inf
        self._read_began = -math.inf
        """When the last read began, on ``wall``: what it saw was committed by then."""
        self._reading = threading.Lock()

    def knows(self, endpoint: str, variant: str, answered_at: float = -math.inf) -> bool:
        """Whether a record of ``endpoint``'s ``variant`` answered at ``answered_at`` (wall
        clock) may be stored. A variant the last read did not see is read for again within
        ``REFRESH_S`` only if its record was answered after that read began: a gateway serves
        a variant once it is in the routing state, so one added since may answer before the
        monitor next reads (its first batches were refused, and lost: the gateway had its 200)."""
        now = self.clock()
        if now - self._seen.get((endpoint, variant), -math.inf) >= REFRESH_S:
            self._read_again(now, answered_at)
        return now - self._seen.get((endpoint, variant), -math.inf) < KNOWN_GRACE_S

    def _read_again(self, now: float, answered_at: float) -> None:
        """Note every name in the routing state as seen ``now``, unless it was read within
        ``REFRESH_S`` and that read began after ``answered_at`` (or ``answered_at`` is ahead of
        this clock: a caller's timestamps cannot make every record a read). A caller arriving
        while another reads waits for that read: answering from before it refused a whole
        batch of records for names the read was about to note."""
        with self._reading:
            newer = self._read_began < answered_at <= self.wall()
            if now - self._read_at < REFRESH_S and not newer:
                return
            self._read_began = self.wall()
            for name, table in self.tables().items():
                for v in table.variants:
                    self._seen[(name, v.name)] = now
            self._read_at = now


class Monitor:
    """Everything one monitor process serves with."""

    def __init__(self, config: GatewayConfig, secrets: Secrets) -> None:
        self.config = config
        self.secrets = secrets
        self.request_ids = RequestIds(secrets.monitor_token)
        """Which request ids a gateway gave to an answer it records: only their labels and
        rewards may wait for the record."""
        stores = with_retries("opening the monitor's database", lambda: open_stores(config))
        self.store, self.state_store = stores.records, stores.state
        self.metrics = MonitorMetrics()
        self.leadership = Leadership(stores.leases, config.monitor.lease_s, self._led)
        self.archive = ReportArchive(config.data_dir / REPORTS_DIR, config.monitor.report_keep)
        self.notifier = Notifier(
            config.notifications, self.metrics, self.state_store, secrets.webhook_secret
        )
        self.runner = MonitorRunner(
            config.monitor,
            self.store,
            self.metrics,
            self.archive,
            self.roles,
            DriftAlarm(self.notifier).observe,
        )
        self.rollouts = RolloutService(
            config,
            self.store,
            self.state_store,
            EvidenceGatherer(
                self.store, self.runner.settings, self._reasons(), self.runner.input_drift
            ),
            self.metrics,
            self.notifier,
            actor=lambda: f"rollout@{self.leadership.identity}",
        )
        self.experiments = ExperimentReadouts(
            config, self.store, self.state_store, self.metrics, self.archive
        )
        self.known = KnownVariants(self.tables)
        self.share = SessionShare(
            config.monitor.niceness,
            config.monitor.flush_interval_ms / 1000,
            session_niceness_setter() if config.monitor.niceness else None,
            self.metrics.niceness.set,
        )
        self._cards: dict[str, ModelCard | None] = {}

    def _reasons(self) -> StepReasons | None:
        """The rollouts' verdicts on reasons, explained as the monitor's own attribution is
        (None where ``monitor.attribution_rows`` turns attribution off)."""
        monitor = self.config.monitor
        if monitor.attribution_rows == 0:
            return None
        return StepReasons(
            self.store,
            self.runner.explained,
            monitor.attribution_rows,
            monitor.min_rows,
            monitor.attribution_interval_s,
        )

    def _led(self, leading: bool) -> None:
        """Export whether this process leads; a new leader resumes every rollout at once (a
        transition its predecessor saved but did not apply is applied now), not an interval
        later, in a thread of its own so that the lease's renewals never wait for it."""
        self.metrics.leader.labels(self.leadership.holder).set(int(leading))
        if leading:
            threading.Thread(target=self._resume_rollouts, name="resume rollouts").start()

    def _resume_rollouts(self) -> None:
        for endpoint in self.rollouts.policies:
            try:
                self.rollouts.tick(endpoint)
            except Exception:  # its own task tries again within its interval
                log.warning("resuming the rollout of %s failed", endpoint, exc_info=True)

    @classmethod
    def start(cls, config_path: Path, config: GatewayConfig) -> Monitor:
        secrets = load_secrets(config.secrets)
        check_exposure(secrets, listening_host())
        return cls(config, secrets)

    def tables(self) -> Mapping[str, EndpointTable]:
        """The routing tables as they are now (the config's before any state was saved)."""
        state = self.state_store.load()
        return state.tables if state else self.config.tables()

    def roles(self) -> dict[tuple[str, str], str]:
        return {(e, v.name): v.role for e, t in self.tables().items() for v in t.variants}

    def card(self, tag: str) -> ModelCard | None:
        """A model version's card (None once it left the store); read once per tag."""
        if tag not in self._cards:
            try:
                self._cards[tag] = registry.load_card(tag)
            except ConfigError:
                return None
        return self._cards[tag]

    def accepts(self, record: PredictionRecord) -> bool:
        """Whether a posted record may be stored: well-formed names and values, an endpoint and
        variant the routing state knows, an id of the gateway's form, the shape of an answer of
        its model."""
        return (
            is_name(record.endpoint)
            and is_name(record.variant)
            and is_tag(record.model)
            and endpoint_of(record.request_id) == record.endpoint
            and record.outcome in OUTCOMES
            and math.isfinite(record.at)
            and math.isfinite(record.latency_s)
            and record.latency_s >= 0
            and all(is_name(name) for name in record.shadow)
            and (record.unit is None or is_unit(record.unit))
            and self.known.knows(record.endpoint, record.variant, record.at)
            and fits_its_model(record, self.card(record.model))
        )

    def prune(self, now: float | None = None) -> dict:
        """Everything older than its retention goes (records, labels and rewards, audit,
        evaluations, webhook events, reports) but an experiment's window and the records a
        rollout that has not ended judges; labels and rewards held longer than
        ``label_retention_s`` for their prediction expire."""
        now = now or time.time()
        retention = self.config.retention
        kept = self.experiments.windows_kept()
        for endpoint, since in self.rollouts.windows_kept().items():
            kept[endpoint] = min(since, kept.get(endpoint, since))
        deleted = self.store.prune(
            now - retention.predictions_s,
            now - retention.labels_s,
            now - self.config.monitor.label_retention_s,
            kept,
        )
        deleted |= self.state_store.prune(
            now - retention.audit_s, now - retention.evaluations_s, now - retention.webhooks_s
        )
        deleted["reports"] = self.archive.prune_older_than(retention.reports_s, now)
        self.metrics.labels_expired.inc(deleted["expired_labels"])
        self.metrics.rewards.labels("expired").inc(deleted["expired_rewards"])
        if any(deleted.values()):
            log.info("pruned %s", deleted)
        return deleted
