"""Experiments in the monitor: each endpoint's A/B readout, read from its records, labels and
rewards (monitors/experiments.py does the statistics), answered on request, exported for Grafana
and saved with the reports.

An experiment's state (service/experiment_state.py) is written by the gateway's admin API into the
shared routing-state store; the monitor reads it to know the window: from its start to its stop,
or to now while it runs. Pinned requests are not in it (the caller chose the arm: not a random
draw), and each unit (the digest of a routing key, or a request without one) counts once per arm.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import replace

import pandas as pd

from monitors.experiments import Readout, UnitTotals, finite, readout
from monitors.reports import ReportArchive, ReportSummary
from monitors.store import MonitorStore
from service import registry
from service.config import ExperimentConfig, GatewayConfig
from service.errors import ConfigError, NotFound
from service.experiment_state import RUNNING, STOPPED, ExperimentState, load_state
from service.monitor.metrics import MonitorMetrics
from traffic.store import StateStore, VersionConflict

VERDICTS = ("ship", "no_ship", "inconclusive")


class ExperimentReadouts:
    """The experiments gateway.yaml declares, read out every monitor interval and on demand.

    A readout reads its whole window, about 3.7 s per million requests (BENCHMARKS.md), so an
    operator's read is answered with the newest readout of the experiment as it stands (its
    start, stop and weight changes), computed at most ``interval_s`` ago or being renewed, and
    says when it was computed. Computed on every read, a read of a long experiment outlasted the
    gateway's wait for the monitor and answered 503, and each read took that CPU again. The
    newest is kept in the shared state store, so every monitor answers the leader's."""

    def __init__(
        self,
        config: GatewayConfig,
        store: MonitorStore,
        state_store: StateStore,
        metrics: MonitorMetrics,
        archive: ReportArchive,
    ) -> None:
        self.experiments: dict[str, ExperimentConfig] = {
            name: endpoint.experiment
            for name, endpoint in config.endpoints.items()
            if endpoint.experiment is not None
        }
        self.control_models = {
            name: next(v.model for v in endpoint.variants if v.name == endpoint.experiment.arms[0])
            for name, endpoint in config.endpoints.items()
            if endpoint.experiment is not None
        }
        """Endpoint -> the model of its control arm, as gateway.yaml declares it."""
        self.store = store
        self.state_store = state_store
        self.metrics = metrics
        self.archive = archive
        self.report_interval_s = config.monitor.report_interval_s
        self.renew_after_s = config.monitor.interval_s
        """How old the newest readout may be before a read has a newer one computed."""
        self._saved_at: dict[str, float] = {}
        self._computing = {endpoint: threading.Lock() for endpoint in self.experiments}
        """Held while an experiment's readout is computed: one at a time per experiment."""

    def state(self, endpoint: str) -> ExperimentState | None:
        return load_state(self.state_store, endpoint)[1]

    def windows_kept(self) -> dict[str, float]:
        """Endpoint -> the start of its experiment's window, for the windows whose records
        pruning must spare: every one whose readout is not final yet (a readout counts every
        unit since the start, experiments often outlast the records' retention, and rewards
        join a stopped one for ``join_window_s``)."""
        kept = {}
        for endpoint in self.experiments:
            state = self.state(endpoint)
            if state is not None and state.final is None:
                kept[endpoint] = state.started_at
        return kept

    def describe(self, endpoint: str, now: float | None = None) -> dict:
        """The experiment's state and, once started, its whole readout (JSON-ready)."""
        experiment = self.experiments.get(endpoint)
        if experiment is None:
            raise NotFound(f"endpoint {endpoint!r} has no experiment in gateway.yaml")
        state = self.state(endpoint)
        if state is None:
            return {"endpoint": endpoint, "status": "not_started"}
        if state.final is not None:
            return _answer(endpoint, state, state.final)
        return _answer(
            endpoint, state, self.newest(endpoint, experiment, state, now or time.time())
        )

    def newest(
        self, endpoint: str, experiment: ExperimentConfig, state: ExperimentState, now: float
    ) -> dict:
        """The newest readout computed on ``state`` (its ``computed_at``, then the readout), at
        once where there is one; one older than ``renew_after_s`` has a newer one computed in
        the background. Only a state no readout was computed on yet (just started or stopped,
        weights just changed) waits for one."""
        kept = self._kept(endpoint, state)
        if kept is None:
            return self._kept_or_computed(endpoint, experiment, state, now, math.inf)
        due = now - kept["computed_at"] >= self.renew_after_s
        if due and not self._computing[endpoint].locked():
            renewal = (endpoint, experiment, state, now, self.renew_after_s)
            threading.Thread(target=self._kept_or_computed, args=renewal, daemon=True).start()
        return kept

    def compute(
        self, endpoint: str, experiment: ExperimentConfig, state: ExperimentState, now: float
    ) -> Readout:
        """A readout computed at ``now`` on ``state``, kept as the experiment's newest."""
        with self._computing[endpoint]:
            return self._compute_and_keep(endpoint, experiment, state, now)

    def _kept_or_computed(
        self,
        endpoint: str,
        experiment: ExperimentConfig,
        state: ExperimentState,
        now: float,
        reuse_within_s: float,
    ) -> dict:
        """The kept readout on ``state`` where it was computed less than ``reuse_within_s``
        before ``now`` (by another read or monitor, while this one waited), else a new one."""
        with self._computing[endpoint]:
            kept = self._kept(endpoint, state)
            if kept is not None and now - kept["computed_at"] < reuse_within_s:
                return kept
            return _timed(now, self._compute_and_keep(endpoint, experiment, state, now))

    def _compute_and_keep(
        self, endpoint: str, experiment: ExperimentConfig, state: ExperimentState, now: float
    ) -> Readout:
        result = self.read_out(endpoint, experiment, state, now)
        self.state_store.save_readout(endpoint, state.to_dict(), now, result.to_dict())
        return result

    def _kept(self, endpoint: str, state: ExperimentState) -> dict | None:
        """The experiment's newest kept readout (its ``computed_at``, then the readout), where
        it was computed on ``state``."""
        found = self.state_store.load_readout(endpoint)
        as_kept = json.loads(json.dumps(state.to_dict()))  # the store keeps it as JSON
        if found is None or found[0] != as_kept:
            return None
        return {"computed_at": found[1], **found[2]}

    def read_out(
        self, endpoint: str, experiment: ExperimentConfig, state: ExperimentState, now: float
    ) -> Readout:
        until = state.stopped_at if state.stopped_at is not None else now
        started = {arm: state.weights.get(arm, 0.0) for arm in experiment.arms}
        design = experiment.design(started)  # an arm gateway.yaml added since: weight 0
        units, data = self._unit_data(endpoint, experiment, state.started_at, until)
        elapsed_s = max(0.0, until - state.started_at)
        broken = state.reassignment() or self._treatment_changed(
            endpoint, experiment, state.started_at, until
        )
        return readout(design, units, data, elapsed_s, broken)

    def _treatment_changed(
        self, endpoint: str, experiment: ExperimentConfig, since: float, until: float
    ) -> str | None:
        """Why an arm's units did not all see one treatment, or None: an arm is a variant, and
        a variant's model can change while the experiment runs (a reload of gateway.yaml, a
        restart with it edited), which no routing change through the admin API records."""
        answering = self.store.models_answering(endpoint, experiment.arms, since, until)
        for arm, models in answering.items():
            if len(models) > 1:
                named = " and ".join(sorted(models))
                return f"arm {arm} was answered by {named} while it ran: its units saw both"
        return None

    def _unit_data(
        self, endpoint: str, experiment: ExperimentConfig, since: float, until: float
    ) -> tuple[dict[str, int], dict[str, dict[str, UnitTotals]]]:
        """Units per arm, and per metric and arm the per-unit totals the readout needs."""
        arms = experiment.arms
        by_request = experiment.unit == "request"
        missing = {name: reward.missing for name, reward in experiment.rewards.items()}
        totals = self.store.unit_totals(endpoint, arms, since, until, missing, by_request)
        within = self._accuracy_tolerance(endpoint)
        accuracy = self.store.unit_accuracy(endpoint, arms, since, until, by_request, within)
        per_arm = _by_arm(totals, arms)
        units = {arm: len(frame) for arm, frame in per_arm.items()}
        data = {
            name: {
                arm: UnitTotals.of(frame[f"{name}_sum"], frame[f"{name}_count"])
                for arm, frame in per_arm.items()
            }
            for name in missing
        }
        data["error_rate"] = {
            arm: UnitTotals.of(frame.failed, frame.requests) for arm, frame in per_arm.items()
        }
        data["latency_ms"] = {
            arm: UnitTotals.of(frame.latency_s * 1000.0, frame.answered)
            for arm, frame in per_arm.items()
        }
        if len(accuracy):
            data["accuracy"] = {
                arm: UnitTotals.of(frame.correct, frame.labeled)
                for arm, frame in _by_arm(accuracy, arms).items()
            }
        return units, data

    def _accuracy_tolerance(self, endpoint: str) -> float | None:
        """For an endpoint of regressors, how close to its label an answer is accurate: the
        control model's (registry.accuracy_tolerance), the same for every arm; None for
        classifiers, whose answers are accurate when they are the label."""
        try:
            return registry.accuracy_tolerance(self.control_models[endpoint])
        except ConfigError:  # the model left the store: read as a classifier's, not a 500
            return None

    def list(self) -> list[dict]:
        """Every declared experiment: its status and, once started, its verdict."""
        described = []
        for endpoint in self.experiments:
            full = self.describe(endpoint)
            described.append(
                {
                    key: full[key]
                    for key in ("endpoint", "status", "started_at", "verdict", "reason", "winner")
                    if key in full
                }
            )
        return described

    def export(self, now: float | None = None) -> None:
        """Every started experiment's readout into the metrics (a final one as it was kept);
        saved as a report every ``report_interval_s`` while it runs, once after it stopped, and
        once more when it becomes final."""
        now = now or time.time()
        for endpoint, experiment in self.experiments.items():
            revision, state = load_state(self.state_store, endpoint)
            if state is None:
                continue
            if state.final is not None:
                self._set_metrics(endpoint, _answer(endpoint, state, state.final))
                continue
            result = self.compute(endpoint, experiment, state, now)
            kept = _timed(now, result)
            document = _answer(endpoint, state, kept)
            self._set_metrics(endpoint, document)
            closed = state.status == STOPPED and now >= state.stopped_at + experiment.join_window_s
            saved = self._saved_at.get(endpoint)
            due = (
                closed
                or saved is None
                or (state.status == RUNNING and now - saved >= self.report_interval_s)
            )
            if closed:
                self._finalize(endpoint, revision, replace(state, final=kept))
            if due:
                self.archive.save_document(
                    endpoint, experiment.arms[0], "experiment", document, _summary(endpoint, result)
                )
                self._saved_at[endpoint] = now

    def _finalize(self, endpoint: str, revision: int, final: ExperimentState) -> None:
        """Keep the readout of a window no reward can join any more with the experiment's state
        (``final``), read from then on: pruning takes the window's records after that
        (``windows_kept``), and a stopped experiment read out of what was left read 0 units a
        week later."""
        try:
            self.state_store.save_experiment(endpoint, final.to_dict(), revision)
        except VersionConflict:  # started again meanwhile: that window is not this one
            pass

    def _set_metrics(self, endpoint: str, document: dict) -> None:
        """A readout as a read answers it (computed now, or a final one kept as JSON) into the
        metrics: a final one's stay on the dashboard after the monitor restarts."""
        metrics = self.metrics
        metrics.experiment_running.labels(endpoint).set(document["status"] == RUNNING)
        ratio = document["sample_ratio"]
        for arm, units in ratio["units"].items():
            metrics.experiment_units.labels(endpoint, arm).set(units)
        for metric, arms in document["metrics"].items():
            for arm, summary in arms.items():
                if summary["units"]:
                    metrics.experiment_mean.labels(endpoint, arm, metric).set(
                        _gauge(summary["mean"])
                    )
        for arm in document["arms"]:
            for item in arm["metrics"]:
                lift = item["lift"]
                if lift is None:
                    continue
                lower, upper = lift["always_valid_interval_relative"]
                bounds = {"estimate": lift["relative"], "lower": lower, "upper": upper}
                for bound, value in bounds.items():
                    gauge = metrics.experiment_lift.labels(
                        endpoint, arm["arm"], item["metric"], bound
                    )
                    gauge.set(_gauge(value))
                p_value = metrics.experiment_p_value.labels(endpoint, arm["arm"], item["metric"])
                p_value.set(_gauge(item["p_value_adjusted"]))
        metrics.experiment_srm_p_value.labels(endpoint).set(_gauge(ratio["p_value"]))
        for verdict in VERDICTS:
            metrics.experiment_verdict.labels(endpoint, verdict).set(document["verdict"] == verdict)


def _timed(at: float, result: Readout) -> dict:
    """A readout as it is kept and answered: when it was computed, then the readout."""
    return {"computed_at": at, **result.to_dict()}


def _answer(endpoint: str, state: ExperimentState, readout: dict) -> dict:
    """What a read answers and a saved report holds: the state, and a readout computed on it
    (its ``computed_at``, then the readout)."""
    fields = state.to_dict()
    del fields["final"]  # a final readout is the answer itself
    return {"endpoint": endpoint, **fields, **readout}


def _gauge(value: float | None) -> float:
    """A readout's number as a gauge's value: JSON's null (no finite value) is NaN."""
    return math.nan if value is None else value


def _by_arm(frame: pd.DataFrame, arms: list[str]) -> Mapping[str, pd.DataFrame]:
    return {arm: frame[frame.variant == arm] for arm in arms}


def _summary(endpoint: str, result: Readout) -> ReportSummary:
    """The readout at a glance: the verdict, then a row per treatment arm and metric."""
    control = result.design.control
    rows = []
    for arm in result.arms:
        for item in arm.results:
            lift = item.lift
            means = result.summaries.get(item.metric, {})
            rows.append(
                (
                    arm.arm,
                    item.metric,
                    item.role,
                    finite(means[control].mean) if control in means else None,
                    finite(means[arm.arm].mean) if arm.arm in means else None,
                    None if lift is None else finite(lift.relative),
                    None if lift is None else finite(lift.always_valid_relative.lower),
                    None if lift is None else finite(lift.always_valid_relative.upper),
                    finite(item.p_adjusted),
                    item.outcome,
                )
            )
    srm = result.sample_ratio
    headline = (
        f"{endpoint} experiment: {result.verdict} ({result.reason}); sample ratio "
        f"{'MISMATCH' if srm.flagged else 'ok'} (p = {srm.p_value:.3g})"
    )
    columns = (
        "arm",
        "metric",
        "role",
        f"mean ({control})",
        "mean (arm)",
        "relative lift",
        "always-valid lower",
        "always-valid upper",
        "p (BH)",
        "outcome",
    )
    return ReportSummary(headline, columns, tuple(rows))
