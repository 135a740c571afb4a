"""``gateway.yaml``: the one configuration file, validated in full before anything starts.

Unknown keys and bad values are start-up errors that name the key (``ConfigError``), so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ConfigError
from service.names import LATEST, NAME_PATTERN, is_name, is_tag
from traffic.rollout_policy import (
    DEFAULT_COMPARISONS,
    DEFAULT_GUARDRAILS,
    RATE_GUARDRAILS,
    CompareMetric,
    Comparison,
    GuardMetric,
    Guardrail,
    RolloutPolicy,
    Step,
    default_comparisons,
)
from traffic.table import (
    EndpointTable,
    RoutingError,
    RoutingPolicy,
    VariantSpec,
    check_variants,
)

if TYPE_CHECKING:
    from monitors.experiments import Design


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


CONFIG_ENV = "GATEWAY_CONFIG"
"""The environment variable naming gateway.yaml for the servers ``gateway serve`` starts."""
LOOPBACK = "127.0.0.1"
MAX_RECORD_BATCH_BYTES = 64 * 2**20
"""The most one posted batch of records (or labels) may weigh: the monitor's body limit."""


class ServerConfig(Strict):
    host: str = Field(LOOPBACK, description="listen address; 0.0.0.0 exposes every interface")
    port: int = Field(3000, ge=1, le=65535)
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="the Open Inference Protocol over gRPC on this port, on the address HTTP "
        "listens on (`gateway serve --host`, else host; a plain `bentoml serve` uses host); "
        "none: gRPC off. Triton's default is 8001",
    )
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = False
    latency_slo_ms: float = Field(100.0, gt=0, description="gets its own histogram bucket")
    request_read_timeout_s: float = Field(
        30.0,
        ge=0,
        description="a connection whose client has not sent a whole request this long after "
        "opening it or starting the request is closed with a 408 (slow clients); 0: no limit. "
        "The monitor's port too. On the gRPC port: the HTTP/2 handshake's limit, and connections "
        "are renewed this often (clients reconnect on their own), so a call whose message never "
        "ends is closed within twice it",
    )


class BatchingConfig(Strict):
    """In-process micro-batching: concurrent requests to one model version are run as one batch."""

    enabled: bool = True
    max_batch_size: int = Field(64, ge=1, le=65536, description="rows per batch")
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="extra wait for more rows once a batch has started to form"
    )
    max_queue: int = Field(
        512, ge=1, le=1_000_000, description="requests waiting per model; beyond it: 429"
    )
    concurrency: int = Field(1, ge=1, le=64, description="onnxruntime runs in flight per model")


class AdmissionConfig(Strict):
    """Admission of predictions under overload (service/gateway/admission.py)."""

    queue_budget_ms: float | None = Field(
        None,
        gt=0,
        description="how long admitted predictions may take (p90, from the gate); default a sixth "
        "of the SLO, leaving the rest for the time before the gate under a spike",
    )
    min_concurrency: int = Field(4, ge=1, description="the adaptive limit never goes below")
    max_concurrency: int = Field(1024, ge=1, description="...nor above (per worker)")
    max_refusals_per_s: float = Field(
        200.0, gt=0, description="refusals are held so they cost at most this many per second"
    )
    max_hold_ms: float = Field(
        4000.0,
        gt=0,
        le=60_000,
        description="...but none longer than this: a caller waits at most this for its 429 (below "
        "the 5 s many HTTP clients time out at, httpx's default)",
    )
    feedback_concurrency: int = Field(
        32, ge=1, description="/feedback calls in flight per worker; beyond: 429"
    )


class RuntimeConfig(Strict):
    """How onnxruntime runs each model version."""

    intra_op_threads: int = Field(0, ge=0, le=256, description="0 = onnxruntime's default")
    intra_op_spinning: bool = Field(
        False,
        description="onnxruntime's pool threads spin between runs (each burns a core while the "
        "model is idle; service/runtime.py)",
    )
    warmup_rows: int = Field(8, ge=1, le=4096)


class LimitsConfig(Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_arriving_body_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="bodies still arriving (those that do not come whole with their request's "
        "head; a gRPC message not whole counts as max_body_bytes) hold at most this many bytes "
        "together per worker; past it a request gets 429, a gRPC call RESOURCE_EXHAUSTED "
        "(service/gateway/arriving.py). At least max_body_bytes",
    )
    max_rows: int = Field(4096, ge=1)
    allow_non_finite: bool = Field(
        False,
        description="accept NaN/Inf in float inputs (only for models built to take them; a JSON "
        "number past the input type's range then arrives as infinity)",
    )

    @model_validator(mode="after")
    def _one_body_fits(self) -> LimitsConfig:
        if self.max_arriving_body_bytes < self.max_body_bytes:
            raise ValueError("max_arriving_body_bytes must be at least max_body_bytes")
        return self


class ExplainConfig(Strict):
    """``/explain``: SHAP attributions, computed in a process of their own (service/gateway/explain.py)."""

    max_rows: int = Field(16, ge=1, le=1024, description="rows one call may ask to explain")
    background_rows: int = Field(
        100, ge=1, le=10_000, description="reference rows SHAP masks with (a seeded subsample)"
    )
    max_evals: int = Field(
        0, ge=0, description="model evaluations per row; 0: ten permutations (20 x features + 1)"
    )
    max_waiting: int = Field(4, ge=1, description="calls queued or running per worker; beyond: 429")


class FaultConfig(Strict):
    """Injected faults, for demos and tests of shadows and rollbacks: a delay and an error rate."""

    delay_ms: float = Field(0.0, ge=0, le=60_000)
    error_rate: float = Field(0.0, ge=0, le=1)


class VariantConfig(Strict):
    """One variant of an endpoint: a model version from the registry, with its share of traffic."""

    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(description="registry tag name:version")
    role: Literal["stable", "candidate", "shadow"] = "stable"
    weight: float | None = Field(None, ge=0, le=100, description="default 100, shadows 0")
    mirror: float = Field(0.0, ge=0, le=1, description="shadows: share of requests copied")
    faults: FaultConfig | None = None

    @field_validator("model")
    @classmethod
    def _tag_has_version(cls, value: str) -> str:
        """The tag as the model store has it: BentoML lowercases names and versions (a variant
        of ``CancerNet:V1`` answered version ``v1`` and refused a pin of ``v1``)."""
        if not is_tag(value):
            raise ValueError(f"must be a model tag 'name:version', got {value!r}")
        if value.lower().endswith(f":{LATEST}"):
            raise ValueError(
                f"names no version ({LATEST!r} is an alias for the newest), got {value!r}: name "
                "the version itself (`gateway models list` shows them)"
            )
        return value.lower()

    def spec(self) -> VariantSpec:
        default_weight = 0.0 if self.role == "shadow" else 100.0
        weight = default_weight if self.weight is None else self.weight
        return VariantSpec(self.name, self.model, self.role, weight, self.mirror)


class RoutingKeyConfig(Strict):
    """Where a request's routing key comes from: a header, or a field of the JSON body."""

    header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    field: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

    @model_validator(mode="after")
    def _exactly_one(self) -> RoutingKeyConfig:
        if (self.header is None) == (self.field is None):
            raise ValueError("give exactly one of header or field")
        return self


class RoutingConfig(Strict):
    key: RoutingKeyConfig | None = None
    require_key: bool = False
    allow_pinning: bool = True
    pinnable: list[str] = Field(
        [],
        description="variants without a traffic share (weight 0, shadows) that callers may pin "
        "without the admin token; by default only the admin token pins those",
    )
    salt: str | None = Field(None, description="default: the endpoint name")

    @field_validator("pinnable")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_name(name):
                raise ValueError(f"{name!r} is not a variant name")
        return value


class StepConfig(Strict):
    weight: float = Field(ge=0, le=100, description="candidate's percent of traffic")
    min_duration_s: float = Field(60.0, ge=0, description="every required check passing this long")
    shadow: bool = Field(False, description="weight 0: the candidate mirrors every request")
    gate: bool = Field(False, description="after this step, wait for an operator's approval")

    @model_validator(mode="after")
    def _shadow_has_no_weight(self) -> StepConfig:
        if self.shadow and self.weight:
            raise ValueError("a shadow step takes no weight")
        return self


class GuardrailConfig(Strict):
    """See traffic/rollout_policy.py ``Guardrail`` for what each metric means."""

    metric: GuardMetric
    max: float = Field(gt=0)
    min_count: int = Field(1, ge=1, description="candidate samples (see unit) needed for a verdict")
    breaches: int = Field(1, ge=1, description="rejections among the last of_last evaluations")
    of_last: int = Field(1, ge=1)
    quantile: float = Field(0.5, gt=0, lt=1, description="latency_ratio: which quantile")

    @model_validator(mode="after")
    def _coherent(self) -> GuardrailConfig:
        if self.breaches > self.of_last:
            raise ValueError("breaches cannot exceed of_last")
        if self.metric in RATE_GUARDRAILS and self.max >= 1:
            raise ValueError(f"{self.metric} max is a share of requests, below 1")
        if self.metric == "latency_ratio" and self.max < 1:
            raise ValueError("latency_ratio max is a ratio to stable's latency, at least 1")
        return self


class ComparisonConfig(Strict):
    metric: CompareMetric
    margin: float = Field(gt=0, le=1)
    min_samples: int = Field(10, ge=1, description="per arm, for a verdict")
    required: bool = True


class OfflineGateConfig(Strict):
    enabled: bool = True
    margin: float = Field(0.02, ge=0, le=1, description="accuracy points (or relative MAE) allowed")


class RolloutConfig(Strict):
    """An endpoint's automated rollout of its candidate (traffic/rollout.py decides)."""

    candidate: str = Field(pattern=NAME_PATTERN, description="the variant being rolled out")
    steps: list[StepConfig] = Field(min_length=1)
    interval_s: float = Field(10.0, ge=0.2, le=3600)
    guard_window_s: float = Field(60.0, gt=0)
    guardrails: list[GuardrailConfig] = [GuardrailConfig(**asdict(g)) for g in DEFAULT_GUARDRAILS]
    comparisons: list[ComparisonConfig] | None = Field(
        None, description="default: traffic/rollout_policy.py default_comparisons, by task"
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="false-rollback budget of the rollout")
    guardrail_alpha: float = Field(
        0.01, gt=0, description="the guardrails' share of alpha (the comparisons get the rest)"
    )
    slow_ms: float | None = Field(None, gt=0, description="slow request (default: the SLO)")
    max_insufficient_s: float = Field(600.0, gt=0)
    on_insufficient: Literal["pause", "rollback"] = "pause"
    timeout_s: float = Field(3600.0, gt=0)
    on_timeout: Literal["pause", "rollback"] = "pause"
    revert_window_s: float = Field(300.0, ge=0)
    offline_gate: OfflineGateConfig = OfflineGateConfig()
    dry_run: bool = False
    dry_run_checks: list[str] = []
    count_pinned: bool = Field(
        False, description="judge pinned requests too (by default they are not evidence)"
    )
    unit: Literal["key", "request"] = Field(
        "key",
        description="what the checks count: each routing key's first request in a window "
        "(key) or every request (request: only when users' requests are alike)",
    )

    @model_validator(mode="after")
    def _steps_ramp_up(self) -> RolloutConfig:
        weights = [s.weight for s in self.steps]
        if weights != sorted(weights):
            raise ValueError(f"step weights must not go down, got {weights}")
        if self.guardrail_alpha >= self.alpha:
            raise ValueError("guardrail_alpha is a share of alpha: it must be smaller")
        metrics = [g.metric for g in self.guardrails]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"each guardrail metric at most once, got {metrics}")
        compared = DEFAULT_COMPARISONS if self.comparisons is None else self.comparisons
        names = {g.metric for g in self.guardrails} | {c.metric for c in compared}
        unknown = sorted(set(self.dry_run_checks) - names)
        if unknown:
            raise ValueError(f"dry_run_checks names no check of this policy: {unknown}")
        return self

    def policy(
        self, endpoint: str, stable: str, slo_ms: float, regression: bool = False
    ) -> RolloutPolicy:
        """The controller's view of this section; ``regression``: the endpoint's models are
        regressors (the comparisons it gets when it names none)."""
        comparisons = (
            default_comparisons(regression)
            if self.comparisons is None
            else tuple(Comparison(**c.model_dump()) for c in self.comparisons)
        )
        return RolloutPolicy(
            endpoint=endpoint,
            candidate=self.candidate,
            stable=stable,
            steps=tuple(Step(**s.model_dump()) for s in self.steps),
            guardrails=tuple(Guardrail(**g.model_dump()) for g in self.guardrails),
            comparisons=comparisons,
            interval_s=self.interval_s,
            guard_window_s=self.guard_window_s,
            alpha=self.alpha,
            guardrail_alpha=self.guardrail_alpha,
            slow_ms=self.slow_ms or slo_ms,
            max_insufficient_s=self.max_insufficient_s,
            on_insufficient=self.on_insufficient,
            timeout_s=self.timeout_s,
            on_timeout=self.on_timeout,
            revert_window_s=self.revert_window_s,
            dry_run=self.dry_run,
            dry_run_checks=tuple(self.dry_run_checks),
            count_pinned=self.count_pinned,
            unit=self.unit,
        )


BUILT_IN_METRICS = {"error_rate": False, "latency_ms": False, "accuracy": True}
"""Metrics every experiment reads from its records and labels, with whether higher is better:
the share of requests not answered, the latency of answered ones, and accuracy on labels."""


class RewardConfig(Strict):
    """A business outcome callers post to ``/feedback`` per request (see service/rewards.py)."""

    kind: Literal["binary", "continuous"] = Field(
        "binary",
        description="binary: 0 or 1 (a conversion); continuous: a number of at most 1e15 either way",
    )
    higher_is_better: bool = True
    missing: float | None = Field(
        0.0,
        description="what a request without this reward counts as (0: not converted); "
        "null: such requests are left out of this metric",
    )


class ExperimentGuardrailConfig(Strict):
    metric: str
    margin: float = Field(gt=0, description="how much worse a treatment may be and still ship")
    relative: bool = Field(
        True, description="the margin is a share of the control's mean, else in the metric's unit"
    )


class ExperimentConfig(Strict):
    """An A/B experiment on the endpoint (monitors/experiments.py reads it out); started and
    stopped through ``/admin/experiments/{endpoint}/...``."""

    arms: list[str] = Field(min_length=2, description="variants compared; the first is the control")
    unit: Literal["key", "request"] | None = Field(
        None,
        description="what is randomised and counted: key (one unit per routing key, the "
        "default when routing.key is set) or request",
    )
    rewards: dict[str, RewardConfig] = Field({}, description="metric name -> its definition")
    primary: str = Field(description="the success metric: a reward or a built-in metric")
    guardrails: list[ExperimentGuardrailConfig] = [
        ExperimentGuardrailConfig(metric="error_rate", margin=0.01, relative=False),
        ExperimentGuardrailConfig(metric="latency_ms", margin=0.25),
    ]
    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="error budget of the verdict, split evenly over the treatments: each arm's "
        "always-valid intervals are at 1 - alpha / treatments",
    )
    power: float = Field(0.8, gt=0, lt=1)
    minimum_detectable_effect: float = Field(
        0.05, gt=0, description="relative lift of the primary metric to size the experiment for"
    )
    planned_units: int = Field(
        10_000, ge=100, description="units where the always-valid interval is tuned narrowest"
    )
    min_units: int = Field(100, ge=2, description="units per arm before intervals are given")
    join_window_s: float = Field(
        86_400.0, gt=0, description="rewards later than this after their prediction are refused"
    )

    @model_validator(mode="after")
    def _coherent(self) -> ExperimentConfig:
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct, got {self.arms}")
        for name in self.rewards:
            if not is_name(name) or name in BUILT_IN_METRICS:
                raise ValueError(
                    f"reward {name!r} must be a name (A-Z a-z 0-9 _ . -) other than the "
                    f"built-in metrics {sorted(BUILT_IN_METRICS)}"
                )
        known = sorted({*self.rewards, *BUILT_IN_METRICS})
        guarded = [g.metric for g in self.guardrails]
        for metric in (self.primary, *guarded):
            if metric not in known:
                raise ValueError(f"metric {metric!r} is neither a reward nor built in: {known}")
        if self.primary in guarded or len(set(guarded)) != len(guarded):
            raise ValueError("each guardrail metric once, and not the primary metric")
        return self

    def higher_is_better(self, metric: str) -> bool:
        reward = self.rewards.get(metric)
        return reward.higher_is_better if reward else BUILT_IN_METRICS[metric]

    def design(self, weights: Mapping[str, float]) -> Design:
        """The readout's view of this section, with the arms' weights when it started."""
        from monitors.experiments import Design, MetricSpec  # scipy: the monitor's, not a worker's

        guardrails = {g.metric: g for g in self.guardrails}
        names = [self.primary, *guardrails]
        names += [m for m in (*self.rewards, *BUILT_IN_METRICS) if m not in names]
        metrics = tuple(
            MetricSpec(
                name,
                self.higher_is_better(name),
                guardrails[name].margin if name in guardrails else None,
                guardrails[name].relative if name in guardrails else True,
            )
            for name in names
        )
        return Design(
            control=self.arms[0],
            treatments=tuple(self.arms[1:]),
            weights=dict(weights),
            primary=self.primary,
            metrics=metrics,
            alpha=self.alpha,
            power=self.power,
            minimum_detectable_effect=self.minimum_detectable_effect,
            planned_units=self.planned_units,
            min_units=self.min_units,
        )


class EndpointConfig(Strict):
    routing: RoutingConfig = RoutingConfig()
    variants: list[VariantConfig] = Field(min_length=1)
    rollout: RolloutConfig | None = None
    experiment: ExperimentConfig | None = None

    @model_validator(mode="after")
    def _variants_are_coherent(self) -> EndpointConfig:
        try:
            check_variants(v.spec() for v in self.variants)
        except RoutingError as error:
            raise ValueError(str(error)) from None
        if self.routing.require_key and self.routing.key is None:
            raise ValueError("routing.require_key needs routing.key")
        if self.rollout is not None:
            self.stable_variant()  # a rollout needs exactly one stable variant
            names = {v.name: v for v in self.variants}
            candidate = names.get(self.rollout.candidate)
            if candidate is None or candidate.role == "stable":
                raise ValueError(
                    f"rollout.candidate {self.rollout.candidate!r} must name a candidate or "
                    f"shadow variant of this endpoint"
                )
        if self.experiment is not None:
            self._check_experiment(self.experiment)
        return self

    def _check_experiment(self, experiment: ExperimentConfig) -> None:
        if self.rollout is not None:
            raise ValueError(
                "an endpoint has a rollout or an experiment, not both: a rollout moves the "
                "weights an experiment must keep fixed"
            )
        roles = {v.name: v.role for v in self.variants}
        for arm in experiment.arms:
            if roles.get(arm) in (None, "shadow"):
                raise ValueError(f"experiment arm {arm!r} must be a stable or candidate variant")
        if experiment.unit == "key" and self.routing.key is None:
            raise ValueError("experiment.unit key needs routing.key")

    def stable_variant(self) -> str:
        stable = [v.name for v in self.variants if v.role == "stable"]
        if len(stable) != 1:
            raise ValueError(f"a rollout needs exactly one stable variant, found {stable}")
        return stable[0]

    def table(self, name: str) -> EndpointTable:
        """This endpoint's routing table as the config describes it."""
        key = self.routing.key
        policy = RoutingPolicy(
            key_header=key.header.lower() if key and key.header else None,
            key_field=key.field if key else None,
            require_key=self.routing.require_key,
            allow_pinning=self.routing.allow_pinning,
            pinnable=tuple(self.routing.pinnable),
            salt=self.routing.salt or name,
        )
        return EndpointTable(name, tuple(v.spec() for v in self.variants), policy)


MONITOR_URL = r"^https?://[^\s/]+(:\d+)?$"


class MonitorConfig(Strict):
    """Where prediction records and labels go, and how recording stays off the hot path."""

    url: str | None = Field(
        None, pattern=MONITOR_URL, description="the monitor's base URL; none: recording off"
    )
    urls: list[Annotated[str, Field(pattern=MONITOR_URL)]] = Field(
        [],
        max_length=16,
        description="or several monitors (one leader, standbys): the gateway fails over between them",
    )
    lease_s: float = Field(
        5.0,
        ge=1,
        le=300,
        description="the leader monitor's lease: a standby takes over within about this once "
        "the leader stops renewing it (it renews every lease_s / 5)",
    )
    port: int = Field(3001, ge=1, le=65535, description="port `gateway monitor` listens on")
    host: str = Field(LOOPBACK, description="address `gateway monitor` listens on")
    sample_inputs: float = Field(
        1.0, ge=0, le=1, description="share of requests whose inputs are kept"
    )
    input_rows_per_s: float | None = Field(
        1000.0,
        gt=0,
        description="and per worker and variant at most about this many input rows a second, a "
        "random share of the requests above it (monitors/records.py InputSampler); null: no cap",
    )
    buffer_records: int = Field(10_000, ge=1, description="records held while the monitor is away")
    buffer_bytes: int = Field(
        64 * 2**20, ge=2**20, description="and at most this many bytes of them (estimated)"
    )
    batch_records: int = Field(500, ge=1, le=100_000)
    batch_bytes: int = Field(
        8 * 2**20,
        ge=64 * 1024,
        le=MAX_RECORD_BATCH_BYTES // 2,
        description="records per batch shipped stop at this many bytes (one record always goes)",
    )
    flush_interval_ms: float = Field(200.0, ge=10, le=60_000)
    niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="the monitor process's session yields the CPU to the gateway by this much while "
        "nobody waits for it, and takes its full share while records arrive late or labels or "
        "rewards come (service/monitor/priority.py); 0: never yields",
    )
    timeout_s: float = Field(2.0, gt=0, le=60)
    label_retention_s: float = Field(
        86_400.0, gt=0, description="a label waiting for its prediction is held this long"
    )
    max_pending_labels: int = Field(
        100_000, ge=1, description="labels held for predictions not yet seen; beyond it: 429"
    )
    max_db_mb: float | None = Field(
        None, gt=0, description="cap on the monitor's database; at the cap labels get 503"
    )
    interval_s: float = Field(30.0, ge=1, description="how often drift and quality are computed")
    window_rows: int = Field(10_000, ge=10, description="newest rows per variant a run looks at")
    window_s: float = Field(3600.0, gt=0, description="and no older than this")
    min_rows: int = Field(200, ge=1, description="fewer rows (or labels): insufficient data")
    drift_threshold: float = Field(0.1, gt=0, description="drift when a distance reaches this")
    max_feature_series: int = Field(50, ge=0, description="cap on per-feature drift series")
    attribution_rows: int = Field(
        32, ge=0, le=1000, description="window rows explained per run for attribution drift; 0: off"
    )
    attribution_interval_s: float = Field(
        300.0, ge=1, description="how often attribution drift is computed (most of a run's CPU)"
    )
    attribution_background_rows: int = Field(
        50, ge=1, le=10_000, description="reference rows SHAP masks with in those explanations"
    )
    report_interval_s: float = Field(
        300.0, ge=1, description="how often Evidently reports are saved"
    )
    report_keep: int = Field(10, ge=1, description="reports kept per endpoint, variant and kind")

    @model_validator(mode="after")
    def _one_way_to_name_monitors(self) -> MonitorConfig:
        if self.url is not None and self.urls:
            raise ValueError("set monitor.url (one monitor, or a load balancer) or monitor.urls")
        return self

    def monitor_urls(self) -> list[str]:
        """The monitors' base URLs, in the order the gateway tries them (none: recording off)."""
        return [self.url] if self.url is not None else list(self.urls)


class StateConfig(Strict):
    """Where shared state lives: routing and its audit, rollouts and experiments, the webhook
    outbox, and the monitor's records, labels and rewards (docs/deployment.md)."""

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="sqlite: files in data_dir, for one machine (nothing to set up); "
        "postgres: one database shared by replicas on several machines",
    )
    dsn_env: str = Field(
        "GATEWAY_DATABASE_URL",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable holding the PostgreSQL DSN (never the file)",
    )
    pool_size: int = Field(
        4, ge=1, le=64, description="PostgreSQL connections per process (each worker has its own)"
    )


class NotificationsConfig(Strict):
    """Webhooks told of rollout steps, holds, gates, promotions and rollbacks, and of drift."""

    webhooks: list[str] = Field([], description="URLs that get a JSON POST per event")
    timeout_s: float = Field(5.0, gt=0, le=60)
    retries: int = Field(3, ge=0, le=10)
    drift_share: float = Field(
        0.3, gt=0, le=1, description="a variant's drifted feature share that fires a drift event"
    )

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"https?://[^\s/]+(:\d+)?(/\S*)?", url):
                raise ValueError(f"webhook {url!r} must be an http(s) URL")
        return value


class SecretsConfig(Strict):
    """Files holding the shared secrets, for deployments that mount them (a Kubernetes Secret).
    The environment variable of the same secret, when set, wins; relative paths are relative to
    gateway.yaml. See docs/operations.md, "Security"."""

    admin_token_file: Path | None = Field(None, description="else GATEWAY_ADMIN_TOKEN")
    monitor_token_file: Path | None = Field(None, description="else GATEWAY_MONITOR_TOKEN")
    metrics_token_file: Path | None = Field(None, description="else GATEWAY_METRICS_TOKEN")
    webhook_secret_file: Path | None = Field(None, description="else GATEWAY_WEBHOOK_SECRET")


class AccessConfig(Strict):
    """What answers without a token. ``token``: the admin token (or, for metrics, the metrics
    token) is needed; ``anonymous``: anyone who reaches the port may read it."""

    metrics: Literal["token", "anonymous"] = Field(
        "token", description="/metrics of the gateway and the monitor (variant names, rates)"
    )
    reports: Literal["token", "anonymous"] = Field(
        "token", description="/reports: Evidently reports show the distributions of user inputs"
    )
    endpoints: Literal["token", "anonymous"] = Field(
        "anonymous",
        description="/endpoints: anonymous callers see the variants that take traffic; "
        "dark ones (weight 0, shadows) only with the admin token",
    )


DAY_S = 86_400.0


class RetentionConfig(Strict):
    """How long the monitor keeps what it stores; pruned every ``prune_interval_s``."""

    predictions_s: float = Field(7 * DAY_S, gt=0, description="prediction records")
    labels_s: float = Field(30 * DAY_S, gt=0, description="labels that joined a prediction")
    audit_s: float = Field(90 * DAY_S, gt=0, description="the routing audit log")
    evaluations_s: float = Field(90 * DAY_S, gt=0, description="rollout evaluations")
    reports_s: float = Field(30 * DAY_S, gt=0, description="saved Evidently reports")
    webhooks_s: float = Field(7 * DAY_S, gt=0, description="delivered or failed webhook events")
    prune_interval_s: float = Field(600.0, ge=1)


class GatewayConfig(Strict):
    server: ServerConfig = ServerConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model_store: Path | None = Field(
        None, description="BentoML home holding the model store (default: BENTOML_HOME)"
    )
    batching: BatchingConfig = BatchingConfig()
    admission: AdmissionConfig = AdmissionConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    limits: LimitsConfig = LimitsConfig()
    explain: ExplainConfig = ExplainConfig()
    data_dir: Path = Field(
        Path("gateway-data"), description="routing state and audit log; relative to the config"
    )
    monitor: MonitorConfig = MonitorConfig()
    state: StateConfig = StateConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    secrets: SecretsConfig = SecretsConfig()
    access: AccessConfig = AccessConfig()
    retention: RetentionConfig = RetentionConfig()
    endpoints: dict[str, EndpointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _cap_only_on_sqlite(self) -> GatewayConfig:
        if self.state.backend == "postgres" and self.monitor.max_db_mb is not None:
            raise ValueError(
                "monitor.max_db_mb caps the embedded SQLite file; on PostgreSQL use the "
                "database's own quotas and alerts instead"
            )
        return self

    @model_validator(mode="after")
    def _reasons_are_computed_where_compared(self) -> GatewayConfig:
        """A rollout that compares reasons needs the monitor to explain inputs it keeps: without
        them its required comparison could never decide, and the step would wait forever."""
        for name, endpoint in self.endpoints.items():
            compared = endpoint.rollout.comparisons if endpoint.rollout else None
            if not any(c.metric == "attribution_divergence" for c in compared or ()):
                continue
            if self.monitor.attribution_rows == 0:
                raise ValueError(
                    f"the rollout of {name!r} compares attribution_divergence, which "
                    "monitor.attribution_rows: 0 turns off"
                )
            if self.monitor.sample_inputs == 0:
                raise ValueError(
                    f"the rollout of {name!r} compares attribution_divergence, which explains "
                    "recorded inputs, and monitor.sample_inputs: 0 records none"
                )
        return self

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        for name in value:
            if not is_name(name):
                raise ValueError(f"endpoint name {name!r} must match {NAME_PATTERN}")
        return value

    def rollout_policies(self, regressors: Collection[str] = ()) -> dict[str, RolloutPolicy]:
        """Each endpoint's rollout policy, for the endpoints that have one; ``regressors``: the
        endpoints whose models are regressors (the config cannot tell)."""
        return {
            name: endpoint.rollout.policy(
                name, endpoint.stable_variant(), self.server.latency_slo_ms, name in regressors
            )
            for name, endpoint in self.endpoints.items()
            if endpoint.rollout is not None
        }

    def tables(self) -> dict[str, EndpointTable]:
        """Every endpoint's routing table as the config describes it."""
        return {name: endpoint.table(name) for name, endpoint in self.endpoints.items()}

    def not_reloadable(self, read: GatewayConfig) -> list[str]:
        """The parts of ``read`` (the file as it is now) that differ from this running config
        and that a reload does not apply: every section but the endpoints' routing and
        variants, which a reload makes the routing state. A rollout or an experiment is read by
        the monitor, and the gateway's feedback and admin API, when they start."""
        differ = [
            name
            for name in type(self).model_fields
            if name != "endpoints" and getattr(read, name) != getattr(self, name)
        ]
        for endpoint in sorted(set(self.endpoints) | set(read.endpoints)):
            running, edited = self.endpoints.get(endpoint), read.endpoints.get(endpoint)
            for part in ("rollout", "experiment"):
                if getattr(running, part, None) != getattr(edited, part, None):
                    differ.append(f"endpoints.{endpoint}.{part}")
        return differ

    def routing_hash(self) -> str:
        """A hash of the endpoints section: tells whether the config changed since state was saved."""
        document = json.dumps(
            {n: e.model_dump(mode="json", exclude={"rollout"}) for n, e in self.endpoints.items()},
            sort_keys=True,
        )
        return hashlib.sha256(document.encode()).hexdigest()[:16]

    def faults(self) -> dict[tuple[str, str], FaultConfig]:
        """Injected faults by (endpoint, variant), for the variants that have some."""
        return {
            (name, v.name): v.faults
            for name, endpoint in self.endpoints.items()
            for v in endpoint.variants
            if v.faults is not None
        }


def describe(error: ValidationError, source: str) -> str:
    """One line per invalid key, naming it."""
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "gateway.yaml") -> GatewayConfig:
    """Validate an already-parsed document; raise ``ConfigError`` naming each bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe(error, source)) from None
    base = Path(source).resolve().parent
    updates = {}
    if config.model_store is not None and not config.model_store.is_absolute():
        updates["model_store"] = base / config.model_store
    if not config.data_dir.is_absolute():
        updates["data_dir"] = base / config.data_dir
    files = {
        key: base / path
        for key, path in config.secrets.model_dump().items()
        if path is not None and not path.is_absolute()
    }
    if files:
        updates["secrets"] = config.secrets.model_copy(update=files)
    return config.model_copy(update=updates) if updates else config


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``gateway.yaml``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(data, str(path))
