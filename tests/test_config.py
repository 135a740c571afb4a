"""gateway.yaml validation: good configs load, and every mistake names its key."""

from __future__ import annotations

import pytest

from service.config import load_config, parse_config
from service.errors import ConfigError

MINIMAL = {"endpoints": {"iris": {"variants": [{"name": "a", "model": "iris:v1"}]}}}


def test_minimal_config_gets_defaults():
    config = parse_config(MINIMAL)
    assert config.server.port == 3000
    assert config.device == "auto"
    assert config.batching.enabled
    table = config.tables()["iris"]
    assert [(v.name, v.model, v.weight) for v in table.variants] == [("a", "iris:v1", 100.0)]
    assert table.policy.salt == "iris" and table.policy.allow_pinning


def test_a_variants_model_is_the_tag_the_store_has():
    """BentoML lowercases tags: a variant of ``Iris:V1`` serves, answers and is pinned as
    ``iris:v1``."""
    config = parse_config(
        {"endpoints": {"iris": {"variants": [{"name": "a", "model": "Iris:V1"}]}}}
    )
    assert [v.model for v in config.tables()["iris"].variants] == ["iris:v1"]


def test_several_variants_are_expressible():
    config = parse_config(
        {
            "endpoints": {
                "iris": {
                    "variants": [
                        {"name": "stable", "model": "iris:v1", "weight": 95},
                        {"name": "canary", "model": "iris:v2", "weight": 5, "role": "candidate"},
                        {"name": "shadow", "model": "iris:v3", "role": "shadow", "mirror": 0.1},
                    ]
                }
            }
        }
    )
    roles = [v.role for v in config.endpoints["iris"].variants]
    assert roles == ["stable", "candidate", "shadow"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"sever": {}}, "sever: unknown key"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"workers": 0}}, "server.workers"),
        ({"server": {"request_read_timeout_s": -1}}, "server.request_read_timeout_s"),
        ({"device": "tpu"}, "device"),
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"batching": {"max_wait": 1}}, "batching.max_wait: unknown key"),
        ({"limits": {"max_rows": -1}}, "limits.max_rows"),
        (
            {"limits": {"max_body_bytes": 2**20, "max_arriving_body_bytes": 2**19}},
            "max_arriving_body_bytes must be at least max_body_bytes",
        ),
        ({"endpoints": {}}, "endpoints"),
        ({"endpoints": {"bad name!": MINIMAL["endpoints"]["iris"]}}, "endpoints"),
        ({"endpoints": {"e": {"variants": [{"name": "a", "model": "no-version"}]}}}, "model"),
        (
            {"endpoints": {"e": {"variants": [{"name": "a", "model": "m:v1", "weight": 101}]}}},
            "weight",
        ),
        (
            {"endpoints": {"e": {"variants": [{"name": "a", "model": "m:v1", "role": "boss"}]}}},
            "role",
        ),
        (
            {
                "endpoints": {
                    "e": {
                        "variants": [{"name": "a", "model": "m:v1"}, {"name": "a", "model": "m:v2"}]
                    }
                }
            },
            "unique",
        ),
        (
            {
                "endpoints": {
                    "e": {
                        "variants": [{"name": "a", "model": "m:v1"}, {"name": "b", "model": "m:v1"}]
                    }
                }
            },
            "distinct model version",
        ),
        (
            {"endpoints": {"e": {"variants": [{"name": "a", "model": "m:v1", "weight": 0}]}}},
            "weights",
        ),
        ({"state": {"backend": "mysql"}}, "state.backend"),
        ({"state": {"dsn": "postgresql://u:secret@db/gw"}}, "state.dsn: unknown key"),
        ({"state": {"dsn_env": "lower case"}}, "state.dsn_env"),
        ({"state": {"backend": "postgres"}, "monitor": {"max_db_mb": 10}}, "quotas"),
        (
            {"monitor": {"url": "http://127.0.0.1:1", "urls": ["http://127.0.0.1:2"]}},
            "monitor.url (one monitor, or a load balancer) or monitor.urls",
        ),
        ({"monitor": {"urls": ["http://127.0.0.1:2/path"]}}, "monitor.urls.0"),
        ({"monitor": {"lease_s": 0.1}}, "monitor.lease_s"),
        ({"monitor": {"input_rows_per_s": 0}}, "monitor.input_rows_per_s"),
        ({"monitor": {"input_rows_per_s": "lots"}}, "monitor.input_rows_per_s"),
        ({"admission": {"max_hold_ms": 0}}, "admission.max_hold_ms"),
        ({"admission": {"max_hold_ms": 120_000}}, "admission.max_hold_ms"),
    ],
)
def test_bad_values_name_the_key(change, named):
    with pytest.raises(ConfigError) as error:
        parse_config({**MINIMAL, **change})
    assert named in str(error.value)


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("endpoints: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(scalar)


def test_relative_model_store_is_relative_to_the_config(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("model_store: store\nendpoints: {e: {variants: [{name: a, model: 'm:v1'}]}}\n")
    assert load_config(path).model_store == tmp_path / "store"


def test_routing_policy_and_faults_from_config():
    config = parse_config(
        {
            "endpoints": {
                "e": {
                    "routing": {
                        "key": {"header": "X-User-Id"},
                        "require_key": True,
                        "allow_pinning": False,
                    },
                    "variants": [
                        {"name": "a", "model": "m:v1", "weight": 90},
                        {
                            "name": "s",
                            "model": "m:v2",
                            "role": "shadow",
                            "mirror": 0.2,
                            "faults": {"delay_ms": 5},
                        },
                    ],
                }
            }
        }
    )
    policy = config.tables()["e"].policy
    assert policy.key_header == "x-user-id" and policy.require_key and not policy.allow_pinning
    assert config.faults()[("e", "s")].delay_ms == 5
    assert config.routing_hash() == parse_config(config.model_dump(mode="json")).routing_hash()


def _with_rollout(**rollout) -> dict:
    variants = [
        {"name": "stable", "model": "iris:v1", "weight": 90},
        {"name": "next", "model": "iris:v2", "weight": 10, "role": "candidate"},
    ]
    policy = {"candidate": "next", "steps": [{"weight": 10}, {"weight": 50}], **rollout}
    return {"endpoints": {"iris": {"variants": variants, "rollout": policy}}}


def test_a_rollout_policy_becomes_the_controllers_policy_with_defaults():
    config = parse_config(_with_rollout(dry_run_checks=["accuracy"]))
    policy = config.rollout_policies()["iris"]
    assert (policy.candidate, policy.stable) == ("next", "stable")
    assert [s.weight for s in policy.steps] == [10, 50]
    assert {g.metric for g in policy.guardrails} == {
        "error_increase",
        "error_rate",
        "invalid_rate",
        "latency_ratio",
    }
    assert (policy.alpha, policy.guardrail_alpha, policy.on_timeout) == (0.05, 0.01, "pause")
    assert policy.slow_ms == config.server.latency_slo_ms and policy.dry_run_checks == ("accuracy",)
    unchanged = parse_config(
        {"endpoints": {"iris": _with_rollout()["endpoints"]["iris"] | {"rollout": None}}}
    )
    assert unchanged.routing_hash() == config.routing_hash()  # editing a policy keeps the routing


@pytest.mark.parametrize(
    "rollout, named",
    [
        ({"candidate": "stable"}, "rollout.candidate"),
        ({"candidate": "ghost"}, "rollout.candidate"),
        ({"steps": [{"weight": 50}, {"weight": 10}]}, "must not go down"),
        ({"steps": [{"weight": 5, "shadow": True}]}, "shadow step takes no weight"),
        ({"steps": []}, "steps"),
        ({"guardrails": [{"metric": "cpu", "max": 1}]}, "metric"),
        (
            {"guardrails": [{"metric": "error_rate", "max": 0.1, "breaches": 3, "of_last": 2}]},
            "breaches",
        ),
        ({"comparisons": [{"metric": "accuracy", "margin": 2}]}, "margin"),
        ({"dry_run_checks": ["nonsense"]}, "dry_run_checks"),
        ({"on_timeout": "promote"}, "on_timeout"),
        ({"guardrail_alpha": 0.05}, "share of alpha"),
        ({"guardrails": [{"metric": "error_rate", "max": 1.5}]}, "below 1"),
        ({"guardrails": [{"metric": "latency_ratio", "max": 0.5}]}, "at least 1"),
        ({"guardrails": [{"metric": "p99_latency_ratio", "max": 2}]}, "metric"),
        (
            {
                "guardrails": [
                    {"metric": "error_rate", "max": 0.1},
                    {"metric": "error_rate", "max": 0.2},
                ]
            },
            "at most once",
        ),
        ({"surprise": 1}, "surprise"),
        ({"unit": "users"}, "rollout.unit"),
    ],
)
def test_bad_rollout_policies_name_the_problem(rollout, named):
    with pytest.raises(ConfigError, match=named):
        parse_config(_with_rollout(**rollout))


@pytest.mark.parametrize(
    "monitor, named",
    [
        ({"attribution_rows": 0}, "attribution_rows: 0 turns off"),
        ({"sample_inputs": 0}, "sample_inputs: 0 records none"),
    ],
)
def test_a_rollout_comparing_reasons_needs_the_monitor_to_explain_kept_inputs(monitor, named):
    """Else its required comparison never decides and the step waits for ever."""
    config = _with_rollout(comparisons=[{"metric": "attribution_divergence", "margin": 0.2}])
    parse_config(config)  # the defaults explain 32 kept rows per arm
    with pytest.raises(ConfigError, match=named):
        parse_config({**config, "monitor": monitor})
    parse_config({**_with_rollout(), "monitor": monitor})  # nothing compares reasons: fine


AB_VARIANTS = [
    {"name": "a", "model": "iris:v1", "weight": 50},
    {"name": "b", "model": "iris:v2", "weight": 50, "role": "candidate"},
    {"name": "mirror", "model": "iris:v3", "role": "shadow", "mirror": 0.1},
]
AB = {"arms": ["a", "b"], "rewards": {"converted": {}}, "primary": "converted"}


def with_experiment(**experiment) -> dict:
    endpoint = {"routing": {"key": {"header": "x-user-id"}}, "variants": AB_VARIANTS}
    return {"endpoints": {"iris": {**endpoint, "experiment": {**AB, **experiment}}}}


def test_an_experiment_becomes_the_readouts_design_with_defaults():
    experiment = parse_config(with_experiment()).endpoints["iris"].experiment
    design = experiment.design({"a": 50.0, "b": 50.0})
    assert (design.control, design.treatments, design.primary) == ("a", ("b",), "converted")
    metrics = {m.name: m for m in design.metrics}
    assert list(metrics) == ["converted", "error_rate", "latency_ms", "accuracy"]
    assert metrics["error_rate"].margin == 0.01 and not metrics["error_rate"].relative_margin
    assert metrics["latency_ms"].margin == 0.25 and not metrics["latency_ms"].higher_is_better
    assert metrics["converted"].margin is None and metrics["converted"].higher_is_better
    assert experiment.rewards["converted"].kind == "binary"
    assert experiment.rewards["converted"].missing == 0.0
    assert (design.alpha, design.power, experiment.join_window_s) == (0.05, 0.8, 86_400.0)


@pytest.mark.parametrize(
    "experiment, named",
    [
        ({"arms": ["a", "mirror"]}, "stable or candidate"),
        ({"arms": ["a", "nobody"]}, "stable or candidate"),
        ({"arms": ["a", "a"]}, "distinct"),
        ({"arms": ["a"]}, "experiment.arms"),
        ({"primary": "clicks"}, "neither a reward nor built in"),
        ({"rewards": {"latency_ms": {}}}, "built-in"),
        ({"rewards": {"../x": {}}}, "must be a name"),
        ({"guardrails": [{"metric": "converted", "margin": 0.1}]}, "not the primary"),
        ({"guardrails": [{"metric": "error_rate", "margin": 0}]}, "margin"),
        ({"rewards": {"converted": {"kind": "count"}}}, "kind"),
        ({"alpha": 0.7}, "alpha"),
        ({"join_window_s": -1}, "join_window_s"),
        ({"surprise": 1}, "unknown key"),
    ],
)
def test_bad_experiments_name_the_problem(experiment, named):
    with pytest.raises(ConfigError, match=named):
        parse_config(with_experiment(**experiment))


def test_an_endpoint_has_a_rollout_or_an_experiment_not_both():
    config = with_experiment()
    config["endpoints"]["iris"]["rollout"] = {"candidate": "b", "steps": [{"weight": 50}]}
    with pytest.raises(ConfigError, match="a rollout or an experiment, not both"):
        parse_config(config)


def test_an_experiment_by_key_needs_a_routing_key():
    config = with_experiment(unit="key")
    del config["endpoints"]["iris"]["routing"]
    with pytest.raises(ConfigError, match="needs routing.key"):
        parse_config(config)
    config = with_experiment(unit="request")
    del config["endpoints"]["iris"]["routing"]
    assert parse_config(config).endpoints["iris"].experiment.unit == "request"


def test_postgres_takes_its_dsn_from_the_environment_only(monkeypatch):
    from service.state import open_state_store

    config = parse_config({**MINIMAL, "state": {"backend": "postgres", "dsn_env": "MY_DB"}})
    monkeypatch.delenv("MY_DB", raising=False)
    with pytest.raises(ConfigError, match=r"\$MY_DB \(the database's DSN\) is not set"):
        open_state_store(config)
    several = parse_config({**MINIMAL, "monitor": {"urls": ["http://a:1", "http://b:2"]}})
    assert several.monitor.monitor_urls() == ["http://a:1", "http://b:2"]
