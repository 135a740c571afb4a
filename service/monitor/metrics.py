"""The monitor's Prometheus series: drift, quality, labels and the health of its own runs.

Bounded labels: endpoint and variant come from the config; per-feature drift series are capped
(``max_feature_series``, the most drifted first) so a wide model cannot flood Prometheus. A value of
-1 is never exported: a variant with insufficient data has its ``gateway_monitor_window_rows`` set
and its scores left as they were, with ``gateway_monitor_insufficient_data`` at 1.
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from service.exposition import RecentRead, exposition

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        """``registry``: the default one in the monitor; a private one in tests."""
        self.registry = registry
        self.recent_exposition = RecentRead(functools.partial(exposition, registry))
        """Every worker's series in Prometheus's text format, for ``/metrics``."""
        into = {"registry": registry}
        mode = {"multiprocess_mode": "mostrecent", **into}
        self.feature_drift = Gauge(
            "gateway_feature_drift_score",
            "Drift score of one input feature against the model's reference (distance, 0 = none).",
            ["endpoint", "variant", "feature"],
            **mode,
        )
        self.drifted_share = Gauge(
            "gateway_drifted_features_ratio",
            "Share of input features whose drift score reached the threshold.",
            ["endpoint", "variant"],
            **mode,
        )
        self.prediction_drift = Gauge(
            "gateway_prediction_drift_score",
            "Drift of the variant's predictions against its predictions on the reference data.",
            ["endpoint", "variant"],
            **mode,
        )
        self.vs_stable = Gauge(
            "gateway_prediction_divergence_from_stable_score",
            "Distance between a variant's predictions and the stable variant's, same window.",
            ["endpoint", "variant"],
            **mode,
        )
        self.feature_attribution = Gauge(
            "gateway_feature_attribution",
            "Mean absolute SHAP attribution of one input feature over a sample of the window.",
            ["endpoint", "variant", "feature"],
            **mode,
        )
        self.attribution_shift = Gauge(
            "gateway_attribution_shift_score",
            "How far a variant's reasons moved from its reference's (0 = same shares, 1 = none).",
            ["endpoint", "variant"],
            **mode,
        )
        self.attribution_vs_stable = Gauge(
            "gateway_attribution_divergence_from_stable_score",
            "How far a variant's reasons are from the stable variant's, same window (0 to 1).",
            ["endpoint", "variant"],
            **mode,
        )
        self.shadow_agreement = Gauge(
            "gateway_shadow_agreement_ratio",
            "Share of mirrored rows where the shadow predicted what the variant that answered did.",
            ["endpoint", "variant"],
            **mode,
        )
        self.insufficient = Gauge(
            "gateway_monitor_insufficient_data",
            "1 when the last run had too few rows (drift) or labels (quality) for a verdict.",
            ["endpoint", "variant", "kind"],
            **mode,
        )
        self.window_rows = Gauge(
            "gateway_monitor_window_rows",
            "Rows in the last run's window (drift: recorded inputs; quality: labeled rows).",
            ["endpoint", "variant", "kind"],
            **mode,
        )
        self.quality = Gauge(
            "gateway_model_quality",
            "Quality on labeled rows: accuracy, f1, precision, recall (ratios) or mae, rmse "
            "and null_answers (the share of a regressor's answers that were not numbers).",
            ["endpoint", "variant", "metric"],
            **mode,
        )
        self.labels = Counter(
            "gateway_labels_received_total",
            "Labels received through /feedback, by outcome (stored, duplicate, conflict, "
            "invalid, refused: too many waiting for their predictions).",
            ["outcome"],
            **into,
        )
        for outcome in ("stored", "duplicate", "conflict", "invalid", "refused"):
            self.labels.labels(outcome)
        self.rewards = Counter(
            "gateway_rewards_received_total",
            "Experiment rewards received through /feedback, by outcome (stored, duplicate, "
            "conflict, late: after the join window, invalid, refused: too many waiting; expired: "
            "their prediction never came within label_retention_s).",
            ["outcome"],
            **into,
        )
        for outcome in ("stored", "duplicate", "conflict", "late", "invalid", "refused", "expired"):
            self.rewards.labels(outcome)
        self.experiment_running = Gauge(
            "gateway_experiment_running",
            "1 while the endpoint's experiment runs, 0 once stopped.",
            ["endpoint"],
            **mode,
        )
        self.experiment_units = Gauge(
            "gateway_experiment_units",
            "Units (users, or requests without a routing key) each arm has had so far.",
            ["endpoint", "arm"],
            **mode,
        )
        self.experiment_mean = Gauge(
            "gateway_experiment_metric_mean",
            "Each arm's mean of each experiment metric (per request, over its units).",
            ["endpoint", "arm", "metric"],
            **mode,
        )
        self.experiment_lift = Gauge(
            "gateway_experiment_lift_ratio",
            "A treatment's relative lift over the control (0.1 = 10% higher): the estimate and "
            "the bounds of its always-valid 95% interval (bound: estimate, lower, upper).",
            ["endpoint", "arm", "metric", "bound"],
            **mode,
        )
        self.experiment_p_value = Gauge(
            "gateway_experiment_p_value",
            "Fixed-horizon p-value of a treatment's lift, Benjamini-Hochberg-corrected across "
            "the experiment's metrics.",
            ["endpoint", "arm", "metric"],
            **mode,
        )
        self.experiment_srm_p_value = Gauge(
            "gateway_experiment_srm_p_value",
            "Always-valid sample-ratio-mismatch p-value of units per arm against the weights the "
            "experiment started with (below 0.001: the assignment is broken).",
            ["endpoint"],
            **mode,
        )
        self.experiment_verdict = Gauge(
            "gateway_experiment_verdict",
            "1 for the experiment's current verdict (ship, no_ship, inconclusive), 0 for the "
            "others.",
            ["endpoint", "verdict"],
            **mode,
        )
        self.pending = Gauge(
            "gateway_labels_pending",
            "Labels held for a prediction the monitor has not received (yet).",
            **mode,
        )
        self.labels_expired = Counter(
            "gateway_labels_expired_total",
            "Labels dropped after label_retention_s because their prediction never arrived.",
            **into,
        )
        self.niceness = Gauge(
            "gateway_monitor_niceness",
            "The monitor process's CPU niceness beside the gateway: monitor.niceness while nobody "
            "waits for it, 0 (its full share) while records arrive late or labels or rewards come.",
            **mode,
        )
        self.records_refused = Counter(
            "gateway_monitor_refused_records_total",
            "Posted records refused: names the routing state does not know, or malformed ones.",
            **into,
        )
        self.analysis_failures = Counter(
            "gateway_monitor_analysis_failures_total",
            "Analyses of one variant that failed (the others go on), by endpoint and variant.",
            ["endpoint", "variant"],
            **into,
        )
        self.background_restarts = Counter(
            "gateway_background_restarts_total",
            "Background tasks (runs, rollouts, webhook deliveries, pruning) started again "
            "after they died.",
            ["task"],
            **into,
        )
        self.webhooks = Counter(
            "gateway_webhook_deliveries_total",
            "Webhook deliveries by outcome (delivered, retried, failed).",
            ["outcome"],
            **into,
        )
        for outcome in ("delivered", "retried", "failed"):
            self.webhooks.labels(outcome)  # at 0 from the start, not missing
        self.rollout_phase = Gauge(
            "gateway_rollout_phase",
            "1 for the phase each endpoint's rollout is in (progressing, awaiting_approval, "
            "paused, promoted, succeeded, rolled_back), 0 for the others.",
            ["endpoint", "phase"],
            **mode,
        )
        self.rollout_step = Gauge(
            "gateway_rollout_step",
            "The rollout's current step (1-based) and the candidate's weight there.",
            ["endpoint", "candidate"],
            **mode,
        )
        self.rollout_decisions = Counter(
            "gateway_rollout_decisions_total",
            "Rollout transitions (start, advance, await_approval, promote, succeed, rollback, "
            "pause, resume) by cause (a check's name, operator, timeout, ...).",
            ["endpoint", "action", "cause"],
            **into,
        )
        self.rollout_checks = Counter(
            "gateway_rollout_checks_total",
            "Rollout check evaluations by outcome (PASS, FAIL, INSUFFICIENT).",
            ["endpoint", "check", "outcome"],
            **into,
        )
        self.last_run = Gauge(
            "gateway_monitor_last_run_timestamp_seconds",
            "When the last drift and quality run finished (unix time).",
            **mode,
        )
        self.lag = Gauge(
            "gateway_monitor_lag_seconds",
            "Age of the newest record the monitor had at its last run.",
            **mode,
        )
        self.run_duration = Histogram(
            "gateway_monitor_run_duration_seconds",
            "Time one drift and quality run over every variant took.",
            buckets=RUN_BUCKETS,
            **into,
        )

        self.leader = Gauge(
            "gateway_monitor_leader",
            "1 while this monitor holds the leader lease (runs analysis, rollouts, webhooks), "
            "0 while it stands by (it still ingests records, labels and rewards).",
            ["holder"],
            **mode,
        )

    def task_restarted(self, task: str) -> None:
        """Count a supervised background task started again (service/supervise.py)."""
        self.background_restarts.labels(task).inc()
