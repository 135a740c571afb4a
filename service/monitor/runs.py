"""The monitor's analysis runs: for every variant that served recently, drift of its window against
its model's reference sample, and quality on its labeled rows; exported as metrics.

A run reads the newest ``window_rows`` recorded rows (and as many labeled and mirrored rows) of the
last ``window_s`` seconds per variant, however many rows each request had. One variant's failure
is logged and counted (``gateway_monitor_analysis_failures_total``) and never stops the others.
Fewer rows (or labels) than ``min_rows`` give "insufficient_data", never a verdict. Runs happen
every ``interval_s`` seconds and on demand (``POST /runs``); both call ``run_once`` in a thread.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from prometheus_client import Gauge

from monitors.attribution import ProfileDistance, attribution_distance, profile_distance
from monitors.drift import (
    ColumnDrift,
    DriftResult,
    DriftSettings,
    compute_drift,
    drift_report,
    drift_summary,
)
from monitors.quality import QualityMemo, QualityResult, quality, quality_summary
from monitors.reports import ReportArchive
from monitors.shadow import ShadowResult, compare_shadows
from monitors.store import MonitorStore
from service import registry
from service.config import MonitorConfig
from service.errors import ConfigError
from service.explanations import REGRESSION_TARGET, absolute_attributions
from service.exposition import drop_series
from service.model_card import ModelCard
from service.monitor.metrics import MonitorMetrics

log = logging.getLogger("gateway.monitor")


@dataclass
class ModelReference:
    """A model version's card and reference sample, and what is computed on the sample once and
    kept while the monitor runs."""

    card: ModelCard
    frame: pd.DataFrame
    attribution: dict[str, float] | None = None
    """Mean |SHAP| per feature on a sample of the reference (on first need)."""

    @functools.cached_property
    def quality(self) -> QualityResult:
        """The model's quality on its own reference sample (what a variant's is read against)."""
        labeled = self.frame.rename(columns={self.card.label_column: "label"})
        return quality(labeled, _classes(self.card), min_rows=1)


@dataclass(frozen=True)
class Attribution:
    """Each feature's mean absolute SHAP attribution in a sample of the window and of the
    reference, and how far their shares are apart (monitors/attribution.py)."""

    rows: int
    window: dict[str, float]
    reference: dict[str, float]
    window_rows: np.ndarray = field(repr=False, compare=False)
    """The sample's absolute attributions, a row per row (what ``window`` averages)."""

    @property
    def shift(self) -> float:
        return attribution_distance(self.window, self.reference)


@dataclass(frozen=True)
class VariantReport:
    endpoint: str
    variant: str
    model: str
    drift: DriftResult
    quality: QualityResult
    window: pd.DataFrame = field(repr=False, compare=False)
    """The recorded inputs and predictions the run looked at (named feature columns)."""
    vs_stable: ColumnDrift | None = None
    """This variant's predictions against the endpoint's stable variant's, in the same window."""
    shadows: tuple[ShadowResult, ...] = ()
    """The shadows that mirrored this variant's requests: agreement with it and their quality."""
    attribution: Attribution | None = None
    """Why the variant answered what it did in this window, against its reference."""
    attribution_vs_stable: ProfileDistance | None = None
    """How far its reasons are from the stable variant's in the same window (0 to 1), and the
    p-value of the test that this is sampling noise."""

    def to_dict(self) -> dict:
        drift = self.drift
        return {
            "endpoint": self.endpoint,
            "variant": self.variant,
            "model": self.model,
            "drift": {
                "status": drift.status,
                "rows": drift.rows,
                "drifted_features": drift.drifted_features,
                "drifted_share": drift.drifted_share,
                "features": {c.column: c.score for c in drift.features},
                "prediction": drift.prediction.score if drift.prediction else None,
            },
            "quality": {
                "status": self.quality.status,
                "rows": self.quality.rows,
                **self.quality.metrics,
            },
            "vs_stable": None
            if self.vs_stable is None
            else {
                "score": self.vs_stable.score,
                "method": self.vs_stable.method,
                "drifted": self.vs_stable.drifted,
            },
            "attribution": None
            if self.attribution is None
            else {
                "rows": self.attribution.rows,
                "shift": self.attribution.shift,
                "vs_stable": None
                if self.attribution_vs_stable is None
                else asdict(self.attribution_vs_stable),
                "features": self.attribution.window,
            },
            "shadows": {
                s.shadow: {
                    "rows": s.rows,
                    "agreement": s.agreement,
                    "quality": {
                        "status": s.quality.status,
                        "rows": s.quality.rows,
                        **s.quality.metrics,
                    },
                }
                for s in self.shadows
            },
        }


@dataclass(frozen=True)
class Analysed:
    """A variant's last analysis and what it was made on."""

    state: tuple
    """The ``MonitorStore.variant_state`` it read."""
    report: VariantReport
    attributed: bool
    """Whether its attribution was computed on that state (else kept from an earlier one)."""
    saved: bool = False
    """Whether its reports were saved (the ones due later are not saved again)."""


class MonitorRunner:
    """Runs drift and quality for every active variant and exports the results."""

    def __init__(
        self,
        config: MonitorConfig,
        store: MonitorStore,
        metrics: MonitorMetrics,
        archive: ReportArchive,
        roles: Callable[[], Mapping[tuple[str, str], str]] = dict,
        on_drift: Callable[[str, str, str, list[str], float], None] | None = None,
    ) -> None:
        self.roles = roles
        """(endpoint, variant) -> role (stable, candidate, shadow), as routing has them now."""
        self.config = config
        self.store = store
        self.metrics = metrics
        self.archive = archive
        self._last_reports: float | None = None
        """When reports were last saved; the first run only starts the clock (see ``run_once``)."""
        self._last_attribution = 0.0
        self.on_drift = on_drift
        """Told (endpoint, variant, model, drifted features, share) after each drift verdict."""
        self._latest: dict[tuple[str, str], VariantReport] = {}
        """The newest report per (endpoint, variant), whose attribution a run without
        ``attribute`` keeps."""
        self.settings = DriftSettings(threshold=config.drift_threshold, min_rows=config.min_rows)
        self._references: dict[str, ModelReference] = {}
        self._quality = QualityMemo()
        """Quality is computed again only when a variant's labeled rows changed."""
        self._analysed: dict[tuple[str, str, str], Analysed] = {}
        """Each (endpoint, variant, model)'s last analysis."""

    def _reference(self, tag: str) -> ModelReference:
        if tag not in self._references:
            reference = ModelReference(registry.load_card(tag), registry.load_reference(tag))
            needed = self.settings.min_reference_rows
            if len(reference.frame) < needed:
                log.warning(
                    "%s has %d reference rows, fewer than the %d drift needs: its drift is never "
                    "computed (register it with more)",
                    tag,
                    len(reference.frame),
                    needed,
                )
            self._references[tag] = reference
        return self._references[tag]

    def _window(self, endpoint: str, variant: str, card: ModelCard, since: float) -> pd.DataFrame:
        window = self.store.window(endpoint, variant, self.config.window_rows, since)
        names = dict(enumerate(card.feature_names))
        return window.rename(columns=names)

    def analyse(
        self, endpoint: str, variant: str, tag: str, since: float, attribute: bool = True
    ) -> VariantReport:
        """Drift, quality, shadows and attribution of one variant's window; without
        ``attribute`` the variant's last attribution is kept (computed when it has none)."""
        reference = self._reference(tag)
        card = reference.card
        classification = card.task == "classification"
        window = self._window(endpoint, variant, card, since)
        drift = compute_drift(
            window,
            reference.frame,
            card.feature_names,
            "prediction",
            classification,
            self.settings,
        )
        rows, min_rows, classes = self.config.window_rows, self.config.min_rows, _classes(card)
        labeled = self.store.labeled(endpoint, variant, since, rows)
        shadows = compare_shadows(
            self.store.shadowed(endpoint, variant, since, rows), classes, min_rows, self._quality
        )
        previous = self._latest.get((endpoint, variant))
        if attribute or previous is None or previous.model != tag or not previous.attribution:
            attribution = self._attribution(reference, window)
        else:
            attribution = previous.attribution
        return VariantReport(
            endpoint,
            variant,
            tag,
            drift,
            self._quality(labeled, classes, min_rows),
            window,
            shadows=tuple(shadows),
            attribution=attribution,
        )

    def _attribution(self, reference: ModelReference, window: pd.DataFrame) -> Attribution | None:
        """Mean |SHAP| per feature on a seeded sample of the window's recorded inputs, against
        the same on the model's reference (computed once per model); None when off or short.
        Rows with a value that is not finite (``limits.allow_non_finite``) are left out, as
        drift counts them missing: a row the model answers NaN for has NaN attributions, and
        one in the sample made every feature's mean NaN, the shift never seen."""
        card = reference.card
        rows, features = self.config.attribution_rows, list(card.feature_names)
        if rows == 0 or not set(features) <= set(window.columns):
            return None  # off, or no inputs were recorded (monitor.sample_inputs)
        inputs = window[np.isfinite(window[features].to_numpy(dtype=float)).all(axis=1)]
        if len(inputs) < min(rows, self.config.min_rows):
            return None
        sample = inputs.sample(min(rows, len(inputs)), random_state=0)
        if reference.attribution is None:
            frame = reference.frame
            sampled = frame.sample(min(rows, len(frame)), random_state=0)
            reference.attribution = _profile(card, self._explained(card, sampled))
        explained = self._explained(card, sample)
        return Attribution(len(sample), _profile(card, explained), reference.attribution, explained)

    def _explained(self, card: ModelCard, rows: pd.DataFrame) -> np.ndarray:
        """The rows' absolute attributions (rows x features)."""
        features = rows[list(card.feature_names)].to_numpy(dtype=float)
        return self.explained(card.tag, features, list(rows["prediction"]))

    def input_drift(self, tag: str, features: np.ndarray, predictions: list) -> float | None:
        """The share of model ``tag``'s features whose values in ``features`` (rows, in its
        card's order) drifted from its reference, by the monitor's drift rule (None: too few rows
        for a verdict)."""
        reference = self._reference(tag)
        card = reference.card
        names = list(card.feature_names)
        rows = pd.DataFrame(features, columns=names).assign(prediction=predictions)
        classification = card.task == "classification"
        drift = compute_drift(
            rows, reference.frame, names, "prediction", classification, self.settings
        )
        return drift.drifted_share if drift.status == "ok" else None

    def explained(self, tag: str, features: np.ndarray, predictions: list) -> np.ndarray:
        """Each row's absolute attributions by model ``tag`` (rows x features, in its card's
        order), for the answer it gave: a class's probability, or a regressor's value."""
        card = self._reference(tag).card
        classification = card.task == "classification"
        if classification:
            targets = [str(p) for p in predictions]
        else:
            targets = [REGRESSION_TARGET] * len(features)
        return absolute_attributions(
            card, features, targets, self.config.attribution_background_rows
        )

    def run_once(
        self, now: float | None = None, save_reports: bool = False, fresh: bool = False
    ) -> list[VariantReport]:
        """One run over every active variant; saves Evidently reports when asked or when due
        (``report_interval_s`` after the last save or after the first run: a monitor that starts
        or takes over does not begin by writing every variant's reports, seconds of CPU beside
        the gateway; its predecessor's reports stay listed meanwhile).
        Reports due by the interval are saved only for analyses whose reports were not saved
        yet (an operator's ``save_reports`` saves them all): saving a variant's is about a second
        of CPU, the same report again each interval for every idle variant.
        Attribution (SHAP on window rows: most of a run's CPU, a slow signal) is computed every
        ``attribution_interval_s``, or when ``fresh`` (an operator asked for a run)."""
        started = time.perf_counter()
        now = now or time.time()
        since = now - self.config.window_s
        attribute = self.config.attribution_rows > 0 and (
            fresh or now - self._last_attribution >= self.config.attribution_interval_s
        )
        analysed = self._analyse_active(since, attribute)
        if attribute:
            self._last_attribution = now
        reports = self._against_stable([a.report for a in analysed.values()])
        if self._last_reports is None:  # the first reports one interval after the first run
            self._last_reports = now
        due = now - self._last_reports >= self.config.report_interval_s
        for report in reports:
            self._export(report)
            self._latest[(report.endpoint, report.variant)] = report
            if self.on_drift is not None and report.drift.status == "ok":
                drift = report.drift
                self.on_drift(
                    report.endpoint,
                    report.variant,
                    report.model,
                    drift.drifted_features,
                    drift.drifted_share,
                )
            key = (report.endpoint, report.variant, report.model)
            if save_reports or (due and not analysed[key].saved):
                with self._isolated(report.endpoint, report.variant, "reports"):
                    self._save(report)
                    analysed[key] = replace(analysed[key], saved=True)
        self._analysed = analysed  # this run's own, whatever an operator's run beside it did
        if save_reports or due:
            self._last_reports = now
        metrics = self.metrics
        metrics.pending.set(self.store.pending_labels())
        newest = self.store.newest()
        if newest is not None:
            metrics.lag.set(max(0.0, now - newest))
        metrics.last_run.set(time.time())
        metrics.run_duration.observe(time.perf_counter() - started)
        return reports

    def _analyse_active(
        self, since: float, attribute: bool
    ) -> dict[tuple[str, str, str], Analysed]:
        """Each (endpoint, variant, model) active since ``since``, analysed (one that fails is
        left out). A variant none of whose records or labels changed since its last analysis (the
        same ``MonitorStore.variant_state``) keeps that analysis, unless this run attributes and
        that one did not (its attribution may be from an older window): what it would compute
        again is the same, and a run over every variant that served in the last ``window_s`` would
        otherwise read and analyse idle ones every ``interval_s`` beside a busy gateway."""
        analysed = {}
        for endpoint, variant, tag in self.store.active(since):
            with self._isolated(endpoint, variant, "analysis"):
                state = self.store.variant_state(endpoint, variant, since)
                last = self._analysed.get((endpoint, variant, tag))
                if last is None or last.state != state or (attribute and not last.attributed):
                    report = self.analyse(endpoint, variant, tag, since, attribute)
                    last = Analysed(state, report, attribute)
                analysed[(endpoint, variant, tag)] = last
        self._quality.next_run()
        return analysed

    @contextmanager
    def _isolated(self, endpoint: str, variant: str, what: str) -> Iterator[None]:
        """One variant's work: if it fails, the others still run; logged and counted."""
        try:
            yield
        except ConfigError as error:  # e.g. the model was removed from the store
            log.warning("skipping %s of %s/%s: %s", what, endpoint, variant, error)
        except Exception:
            self.metrics.analysis_failures.labels(endpoint, variant).inc()
            log.exception("%s of %s/%s failed; the other variants go on", what, endpoint, variant)

    def _against_stable(self, reports: list[VariantReport]) -> list[VariantReport]:
        """Compare each other variant's predictions with its endpoint's stable variant's."""
        roles = self.roles()
        stable = {r.endpoint: r for r in reports if roles.get((r.endpoint, r.variant)) == "stable"}
        compared = []
        for report in reports:
            base = stable.get(report.endpoint)
            if base is None or base is report:
                compared.append(report)
                continue
            compared.append(report)
            with self._isolated(report.endpoint, report.variant, "comparison with stable"):
                card = self._reference(report.model).card
                result = compute_drift(
                    report.window[["prediction"]],
                    base.window[["prediction"]],
                    [],
                    "prediction",
                    card.task == "classification",
                    self.settings,
                )
                attribution_vs_stable = (
                    profile_distance(report.attribution.window_rows, base.attribution.window_rows)
                    if report.attribution is not None and base.attribution is not None
                    else None
                )
                compared[-1] = replace(
                    report,
                    vs_stable=result.prediction,
                    attribution_vs_stable=attribution_vs_stable,
                )
        return compared

    def _save(self, report: VariantReport) -> None:
        """The operators' Evidently reports for a variant that had a verdict, each opening with
        its summary."""
        reference = self._reference(report.model)
        card = reference.card
        if report.drift.status == "ok":
            snapshot = drift_report(
                report.window,
                reference.frame,
                card.feature_names,
                "prediction",
                card.task == "classification",
                self.settings,
            )
            attribution = report.attribution
            summary = drift_summary(
                report.drift,
                None if attribution is None else (attribution.window, attribution.reference),
            )
            self.archive.save(report.endpoint, report.variant, "drift", snapshot, summary)
        baseline = reference.quality
        for variant, result in (
            (report.variant, report.quality),
            *((shadow.shadow, shadow.quality) for shadow in report.shadows),
        ):
            if result.report is not None:
                summary = quality_summary(result, baseline)
                self.archive.save(report.endpoint, variant, "quality", result.report, summary)

    def _export(self, report: VariantReport) -> None:
        metrics, key = self.metrics, (report.endpoint, report.variant)
        drift, quality = report.drift, report.quality
        metrics.window_rows.labels(*key, "drift").set(drift.rows)
        metrics.insufficient.labels(*key, "drift").set(int(drift.status != "ok"))
        if drift.status == "ok":
            metrics.drifted_share.labels(*key).set(drift.drifted_share)
            if drift.prediction is not None:
                metrics.prediction_drift.labels(*key).set(drift.prediction.score)
            ranked = sorted(drift.features, key=lambda c: c.score, reverse=True)
            for column in ranked[: self.config.max_feature_series]:
                metrics.feature_drift.labels(*key, column.column).set(column.score)
        self._export_quality(key, quality)
        vs_stable = None if report.vs_stable is None else report.vs_stable.score
        _set_or_drop(metrics.vs_stable, key, vs_stable)
        divergence = report.attribution_vs_stable
        _set_or_drop(
            metrics.attribution_vs_stable, key, None if divergence is None else divergence.distance
        )
        if report.attribution is not None:
            metrics.attribution_shift.labels(*key).set(report.attribution.shift)
            ranked = sorted(report.attribution.window.items(), key=lambda i: i[1], reverse=True)
            for feature, value in ranked[: self.config.max_feature_series]:
                metrics.feature_attribution.labels(*key, feature).set(value)
        for shadow in report.shadows:
            shadow_key = (report.endpoint, shadow.shadow)
            metrics.shadow_agreement.labels(*shadow_key).set(shadow.agreement)
            self._export_quality(shadow_key, shadow.quality)

    def _export_quality(self, key: tuple[str, str], quality: QualityResult) -> None:
        metrics = self.metrics
        metrics.window_rows.labels(*key, "quality").set(quality.rows)
        metrics.insufficient.labels(*key, "quality").set(int(quality.status != "ok"))
        for name, value in quality.metrics.items():
            metrics.quality.labels(*key, name).set(value)


def _classes(card: ModelCard) -> tuple | None:
    """A classifier's classes; None for a regressor (what ``quality`` expects)."""
    return card.class_labels if card.task == "classification" else None


def _profile(card: ModelCard, explained: np.ndarray) -> dict[str, float]:
    """Each feature's mean absolute attribution over the explained rows."""
    return dict(zip(card.feature_names, map(float, explained.mean(axis=0))))


def _set_or_drop(gauge: Gauge, key: tuple[str, ...], value: float | None) -> None:
    """Set a series, or drop it when there is no value now: a variant that became stable has no
    divergence from stable, and its old value must not stay on the dashboard."""
    if value is not None:
        gauge.labels(*key).set(value)
    else:
        drop_series(gauge, key)
