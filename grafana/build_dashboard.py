"""Builds grafana/dashboards/gateway.json, the gateway dashboard, from the panel list below.

Run ``.venv/bin/python grafana/build_dashboard.py`` after changing a panel; the test suite checks
that the committed JSON is what this script writes, and runs every query in it against a real
Prometheus scraping a real gateway and monitor (tests/test_dashboard.py).

Each panel is (title, unit, [(PromQL, legend)], kind). Queries filter on the dashboard variables
``$endpoint`` and ``$variant`` (regexes, "All" = ".*") and use ``$__rate_interval``.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "gateway.json"
EV = 'endpoint=~"$endpoint", variant=~"$variant"'
E = 'endpoint=~"$endpoint"'
EA = 'endpoint=~"$endpoint", arm=~"$variant"'
"""An experiment's arms are variants: the variant selector picks them."""
RATE = "[$__rate_interval]"


def _ratio(numerator: str, denominator: str) -> str:
    return f"({numerator}) / ({denominator})"


def _requests(extra: str = "") -> str:
    return f"sum by (endpoint, variant) (rate(gateway_requests_total{{{EV}{extra}}}{RATE}))"


def _quantile(q: float) -> str:
    buckets = f"rate(gateway_request_duration_seconds_bucket{{{EV}}}{RATE})"
    return f"histogram_quantile({q}, sum by (le, endpoint, variant) ({buckets}))"


ROWS = [
    (
        "Traffic",
        [
            (
                "Requests per second",
                "reqps",
                [(_requests(), "{{endpoint}} {{variant}}")],
                "timeseries",
            ),
            (
                "Error ratio (5xx and 429)",
                "percentunit",
                [
                    (
                        _ratio(_requests(', outcome=~"error|rejected"'), _requests()),
                        "{{endpoint}} {{variant}}",
                    )
                ],
                "timeseries",
            ),
            (
                "Latency p50 / p95 / p99 and the SLO",
                "s",
                [
                    (_quantile(0.5), "p50 {{endpoint}} {{variant}}"),
                    (_quantile(0.95), "p95 {{endpoint}} {{variant}}"),
                    (_quantile(0.99), "p99 {{endpoint}} {{variant}}"),
                    ("vector($slo_seconds)", "SLO"),
                ],
                "timeseries",
            ),
            (
                "In flight and queue rejections",
                "short",
                [
                    (
                        f"sum by (endpoint) (gateway_in_flight_requests{{{E}}})",
                        "in flight {{endpoint}}",
                    ),
                    (
                        f"sum by (endpoint, variant) (rate(gateway_queue_rejections_total{{{EV}}}{RATE}))",
                        "rejected/s {{endpoint}} {{variant}}",
                    ),
                ],
                "timeseries",
            ),
            (
                "Shed under overload, and the admission limit",
                "short",
                [
                    (
                        f"sum by (route, reason) (rate(gateway_shed_requests_total{RATE}))",
                        "shed/s {{route}} ({{reason}})",
                    ),
                    ("sum(gateway_admission_limit)", "admission limit (all workers)"),
                ],
                "timeseries",
            ),
            (
                "Queue time before the model run, p50 / p99",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (le, model) "
                        f"(rate(gateway_queue_time_seconds_bucket{RATE})))",
                        f"p{int(q * 100)} {{{{model}}}}",
                    )
                    for q in (0.5, 0.99)
                ],
                "timeseries",
            ),
            (
                "Rows per onnxruntime batch",
                "short",
                [
                    (
                        _ratio(
                            f"sum by (model) (rate(gateway_inference_batch_rows_sum{RATE}))",
                            f"sum by (model) (rate(gateway_inference_batch_rows_count{RATE}))",
                        ),
                        "{{model}}",
                    )
                ],
                "timeseries",
            ),
        ],
    ),
    (
        "Rollouts",
        [
            (
                "Traffic weights (percent; shadows: mirrored percent)",
                "percent",
                [
                    (
                        f"max by (endpoint, variant) (gateway_variant_weight{{{EV}}})",
                        "{{endpoint}} {{variant}}",
                    )
                ],
                "timeseries",
            ),
            (
                "Routing version installed, per replica (one below the others: changes miss it)",
                "short",
                [("min by (instance) (gateway_routing_state_version)", "{{instance}}")],
                "timeseries",
            ),
            (
                "Rollout phase and step",
                "short",
                [
                    (
                        f"max by (endpoint, phase) (gateway_rollout_phase{{{E}}}) == 1",
                        "{{endpoint}} {{phase}}",
                    ),
                    (
                        f"max by (endpoint, candidate) (gateway_rollout_step{{{E}}})",
                        "step {{endpoint}} {{candidate}}",
                    ),
                ],
                "stat",
            ),
            (
                "Rollout decisions by cause",
                "short",
                [
                    (
                        f"sum by (endpoint, action, cause) (increase(gateway_rollout_decisions_total{{{E}}}[1h]))",
                        "{{endpoint}} {{action}} ({{cause}})",
                    )
                ],
                "table",
            ),
            (
                "Rollout checks by outcome",
                "short",
                [
                    (
                        f"sum by (check, outcome) (rate(gateway_rollout_checks_total{{{E}}}{RATE}))",
                        "{{check}} {{outcome}}",
                    )
                ],
                "timeseries",
            ),
        ],
    ),
    (
        "Model health",
        [
            (
                "Drift per feature (top series)",
                "short",
                [(f"gateway_feature_drift_score{{{EV}}}", "{{endpoint}} {{variant}} {{feature}}")],
                "timeseries",
            ),
            (
                "Share of drifted features",
                "percentunit",
                [(f"gateway_drifted_features_ratio{{{EV}}}", "{{endpoint}} {{variant}}")],
                "timeseries",
            ),
            (
                "Prediction drift (vs reference) and divergence from stable",
                "short",
                [
                    (
                        f"gateway_prediction_drift_score{{{EV}}}",
                        "vs reference {{endpoint}} {{variant}}",
                    ),
                    (
                        f"gateway_prediction_divergence_from_stable_score{{{EV}}}",
                        "vs stable {{endpoint}} {{variant}}",
                    ),
                ],
                "timeseries",
            ),
            (
                "Reasons (mean |SHAP| shares): moved from reference, apart from stable",
                "short",
                [
                    (
                        f"gateway_attribution_shift_score{{{EV}}}",
                        "vs reference {{endpoint}} {{variant}}",
                    ),
                    (
                        f"gateway_attribution_divergence_from_stable_score{{{EV}}}",
                        "vs stable {{endpoint}} {{variant}}",
                    ),
                ],
                "timeseries",
            ),
            (
                "Accuracy and F1 on labels",
                "percentunit",
                [
                    (
                        f'gateway_model_quality{{{EV}, metric=~"accuracy|f1"}}',
                        "{{metric}} {{endpoint}} {{variant}}",
                    )
                ],
                "timeseries",
            ),
            (
                "Regressors' error on labels: MAE and RMSE",
                "short",
                [
                    (
                        f'gateway_model_quality{{{EV}, metric=~"mae|rmse"}}',
                        "{{metric}} {{endpoint}} {{variant}}",
                    )
                ],
                "timeseries",
            ),
            (
                "Shadow agreement",
                "percentunit",
                [
                    (f"gateway_shadow_agreement_ratio{{{EV}}}", "monitor {{endpoint}} {{variant}}"),
                    (
                        _ratio(
                            f'sum by (endpoint, variant) (rate(gateway_shadow_rows_total{{{EV}, agreement="agree"}}{RATE}))',
                            f"sum by (endpoint, variant) (rate(gateway_shadow_rows_total{{{EV}}}{RATE}))",
                        ),
                        "gateway {{endpoint}} {{variant}}",
                    ),
                ],
                "timeseries",
            ),
        ],
    ),
    (
        "Experiments",
        [
            (
                "Experiment lift over the control, with its always-valid interval (1 - alpha / treatments)",
                "percentunit",
                [
                    (
                        f"gateway_experiment_lift_ratio{{{EA}}}",
                        "{{endpoint}} {{arm}} {{metric}} {{bound}}",
                    )
                ],
                "timeseries",
            ),
            (
                "Experiment verdict",
                "short",
                [(f"gateway_experiment_verdict{{{E}}} == 1", "{{endpoint}} {{verdict}}")],
                "stat",
            ),
            (
                "Sample ratio (p below 0.001: the assignment is broken)",
                "short",
                [(f"gateway_experiment_srm_p_value{{{E}}}", "{{endpoint}}")],
                "stat",
            ),
            (
                "Experiment units per arm and metric means",
                "short",
                [
                    (f"gateway_experiment_units{{{EA}}}", "units {{endpoint}} {{arm}}"),
                    (
                        f"gateway_experiment_metric_mean{{{EA}}}",
                        "{{metric}} {{endpoint}} {{arm}}",
                    ),
                ],
                "timeseries",
            ),
        ],
    ),
    (
        "Monitor",
        [
            (
                "Monitor lag and time since its last run",
                "s",
                [
                    ("max(gateway_monitor_lag_seconds)", "lag"),
                    ("time() - max(gateway_monitor_last_run_timestamp_seconds)", "since last run"),
                ],
                "timeseries",
            ),
            (
                "Records: shipped, dropped, refused, buffered",
                "short",
                [
                    (f"sum(rate(gateway_monitor_shipped_records_total{RATE}))", "shipped/s"),
                    (f"sum(rate(gateway_monitor_dropped_records_total{RATE}))", "dropped/s"),
                    (
                        f"sum(rate(gateway_monitor_refused_records_total{RATE}))",
                        "refused by the monitor/s",
                    ),
                    ("sum(gateway_monitor_buffered_records)", "buffered"),
                ],
                "timeseries",
            ),
            (
                "Labels received, waiting and expired",
                "short",
                [
                    (
                        f"sum by (outcome) (rate(gateway_labels_received_total{RATE}))",
                        "{{outcome}}/s",
                    ),
                    ("max(gateway_labels_pending)", "waiting for their prediction"),
                    (f"sum(rate(gateway_labels_expired_total{RATE}))", "expired/s"),
                ],
                "timeseries",
            ),
            (
                "Targets up",
                "short",
                [('up{job=~"gateway|gateway-monitor"}', "{{job}} {{instance}}")],
                "stat",
            ),
        ],
    ),
]

ANNOTATIONS = [
    (
        "Promotions",
        "green",
        'sum by (endpoint) (increase(gateway_rollout_decisions_total{action="promote"}[1m])) > 0',
    ),
    (
        "Rollbacks",
        "red",
        'sum by (endpoint) (increase(gateway_rollout_decisions_total{action="rollback"}[1m])) > 0',
    ),
]


def _variable(name: str, query: str) -> dict:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def build() -> dict:
    panels, y, panel_id = [], 0, 1
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "id": panel_id,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for i, (title, unit, targets, kind) in enumerate(row_panels):
            panels.append(
                {
                    "id": panel_id,
                    "type": kind,
                    "title": title,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"x": (i % 3) * 8, "y": y + (i // 3) * 8, "w": 8, "h": 8},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "targets": [
                        {"refId": chr(65 + j), "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(targets)
                    ],
                }
            )
            panel_id += 1
        y += ((len(row_panels) + 2) // 3) * 8
    return {
        "uid": "onnx-gateway",
        "title": "ONNX gateway",
        "tags": ["onnx-gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
                _variable("endpoint", "label_values(gateway_requests_total, endpoint)"),
                _variable(
                    "variant",
                    'label_values(gateway_requests_total{endpoint=~"$endpoint"}, variant)',
                ),
                {
                    "name": "slo_seconds",
                    "type": "constant",
                    "query": "0.1",
                    "hide": 2,
                    "description": "the latency SLO (server.latency_slo_ms / 1000)",
                },
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": name,
                    "enable": True,
                    "iconColor": color,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "expr": expr,
                    "titleFormat": f"{name[:-1]} on {{{{endpoint}}}}",
                    "step": "30s",
                }
                for name, color, expr in ANNOTATIONS
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
