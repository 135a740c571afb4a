"""``gateway demo``: build and register the demo models, write a config, start the monitor (on
port + 1) and the gateway, drive traffic and send its ground-truth labels, run a short A/B test
with a synthetic reward and print its readout, then watch two rollouts (one promoted, one rolled
back).

Everything lives under ``--home``: the built models, the BentoML model store, ``gateway.yaml`` and
the demo's secrets (``secrets/admin.token``, ``secrets/monitor.token``, made once, readable by their
owner only; ``GATEWAY_ADMIN_TOKEN`` / ``GATEWAY_MONITOR_TOKEN`` win when set). Both servers listen
on 127.0.0.1 only, so the demo leaves ``/metrics`` anonymous for a local Prometheus; everything
else is as a deployment gets it by default. Running it again reuses the models, the store and the
secrets, but starts from empty state (routing, rollouts, experiments, records): the previous run's
is moved to ``data.previous``, so the rollouts and the A/B test are told again from their start
rather than resumed (a rollout left running by an interrupted run was paused for its timeout).
With ``--serve-only`` the gateway just serves until Ctrl-C, on the state that is there.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import yaml

from service.demo.experiment import EXPERIMENT
from service.launch import MONITOR_SERVICE, running_server

SECRET_FILES = {
    "admin_token_file": "secrets/admin.token",
    "monitor_token_file": "secrets/monitor.token",
}
DEMO_CONFIG = {
    "server": {"workers": 1},
    "device": "auto",
    "model_store": "bentoml",
    "data_dir": "data",
    "endpoints": {
        "cancer": {
            "routing": {"key": {"header": "x-user-id"}},
            "variants": [
                {"name": "stable", "model": "cancer:v1", "weight": 90, "role": "stable"},
                {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
            ],
            "experiment": EXPERIMENT,
        },
        "diabetes": {"variants": [{"name": "stable", "model": "diabetes:v1"}]},
    },
}


def demo_config(monitor_port: int) -> dict:
    """The demo's gateway.yaml: the monitoring canary plus the two rollout endpoints; gRPC on the
    port after the monitor's (the gateway's port + 2)."""
    from service.demo.rollouts import rollout_endpoints

    monitor = {"url": f"http://127.0.0.1:{monitor_port}", "port": monitor_port, "interval_s": 5}
    endpoints = {**DEMO_CONFIG["endpoints"], **rollout_endpoints()}
    return {
        **DEMO_CONFIG,
        "server": {**DEMO_CONFIG["server"], "grpc_port": monitor_port + 1},
        "monitor": monitor,
        "secrets": SECRET_FILES,
        "access": {"metrics": "anonymous"},  # loopback only: a local Prometheus scrapes it
        "endpoints": endpoints,
    }


def prepare_home(home: Path, monitor_port: int) -> Path:
    """Build and register the demo models under ``home`` (once) and write the config; return it."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str((home / "bentoml").resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    from service import registry
    from service.demo.models import build_demo_models
    from service.errors import ConfigError

    for model in build_demo_models(home / "models"):
        try:
            registry.model_dir(f"{model.name}:{model.version}")
            continue
        except ConfigError:
            pass
        card = registry.add_model(
            model.onnx_path, model.name, model.reference_path, version=model.version
        )
        print(f"registered {card.tag} ({card.task}, sha256 {card.sha256[:12]})")
    from service.secrets import write_secret_file

    for name in SECRET_FILES.values():
        write_secret_file(home / name)
    config_path = home / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(monitor_port), sort_keys=False))
    return config_path


def set_previous_state_aside(home: Path) -> None:
    """Move the last run's state to ``data.previous`` (replacing an older one), so this run
    starts from none."""
    data = home / DEMO_CONFIG["data_dir"]
    if not data.exists():
        return
    previous = home / "data.previous"
    shutil.rmtree(previous, ignore_errors=True)
    data.rename(previous)
    print(f"the previous run's state (routing, rollouts, records) is now in {previous}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_demo(home: Path, port: int, *, serve_only: bool, requests: int) -> int:
    """Prepare ``home``, serve on ``port`` and drive traffic; stops the gateway on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwinds through running_server's cleanup
    config_path = prepare_home(home, port + 1)
    if not serve_only:
        set_previous_state_aside(home)
    try:
        with (
            running_server(config_path, port + 1, service=MONITOR_SERVICE) as monitor_url,
            running_server(config_path, port) as base_url,
        ):
            print(f"gateway ready at {base_url}, monitor at {monitor_url} (config {config_path})")
            print(f"gRPC (Open Inference Protocol) at 127.0.0.1:{port + 2}")
            print(
                f"admin token: {home / SECRET_FILES['admin_token_file']} "
                f"(or GATEWAY_ADMIN_TOKEN); monitor token: "
                f"{home / SECRET_FILES['monitor_token_file']}"
            )
            if not serve_only:
                from service.config import load_config
                from service.demo.experiment import run_experiment
                from service.demo.rollouts import watch_rollouts
                from service.demo.traffic import drive_traffic
                from service.secrets import load_secrets

                secrets = load_secrets(load_config(config_path).secrets)
                drive_traffic(base_url, monitor_url, home / "models", requests, secrets)
                run_experiment(base_url, home / "models", secrets.admin_token)
                watch_rollouts(base_url, home / "models", secrets.admin_token)
            print("serving; press Ctrl-C to stop")
            signal.pause()
    except KeyboardInterrupt:
        pass
    return 0
