"""The ``gateway`` command: registration, checks and start-up errors, as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from monitors.store import SCHEMA as MONITOR_SCHEMA
from service.launch import free_port
from tests.helpers import STORE_ROOT, write_config
from traffic.store import SCHEMA as ROUTING_SCHEMA


def gateway(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(STORE_ROOT / "bentoml"), **extra_env}
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_models_list_shows_the_demo_models(demo_models):
    result = gateway("models", "list")
    assert result.returncode == 0
    assert "cancer:v1" in result.stdout and "classification" in result.stdout


def test_models_add_refuses_a_non_onnx_file(demo_models):
    cancer = demo_models["cancer:v1"]
    result = gateway(
        "models",
        "add",
        str(cancer.reference_path),
        "--name",
        "x",
        "--reference",
        str(cancer.reference_path),
    )
    assert result.returncode == 2
    assert "is not a valid ONNX model" in result.stderr


def test_check_accepts_a_good_config(demo_models, tmp_path):
    result = gateway("check", "--config", str(write_config(tmp_path / "gateway.yaml")))
    assert result.returncode == 0, result.stderr
    assert "2 endpoint(s), 3 model version(s), device cpu" in result.stdout


def test_check_names_the_bad_key(demo_models, tmp_path):
    config = write_config(tmp_path / "gateway.yaml", batching={"max_batch": 8})
    result = gateway("check", "--config", str(config))
    assert result.returncode == 2
    assert "batching.max_batch: unknown key" in result.stderr


def test_cuda_without_a_gpu_is_a_clear_startup_error(demo_models, tmp_path):
    from service import registry
    from service.runtime import cuda_works

    config = write_config(tmp_path / "gateway.yaml", device="cuda")
    result = gateway("check", "--config", str(config))
    if cuda_works(registry.model_dir("cancer:v1") / "model.onnx"):
        assert result.returncode == 0 and "device cuda" in result.stdout
    else:
        assert result.returncode == 2
        assert "device: cuda was asked for but CUDA is not usable" in result.stderr
        assert "Failed to load library" not in result.stderr  # no onnxruntime error spam


def test_serve_with_an_unregistered_model_fails_before_starting(demo_models, tmp_path):
    config = write_config(
        tmp_path / "gateway.yaml",
        endpoints={"e": {"variants": [{"name": "a", "model": "ghost:v3"}]}},
    )
    result = gateway("serve", "--config", str(config))
    assert result.returncode == 2
    assert "model ghost:v3 is not in the model store" in result.stderr


def test_serve_on_a_taken_grpc_port_fails_before_starting(demo_models, tmp_path):
    """Each worker binds the gRPC port once its models are loaded; on a taken port BentoML
    started the workers again and again, and the server never became ready."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        config = write_config(tmp_path / "gateway.yaml", server={"grpc_port": grpc_port})
        result = gateway("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode == 2
    assert f"port {grpc_port} on 127.0.0.1 is taken" in result.stderr


def test_an_unreadable_secret_file_fails_check_and_serve_before_starting(demo_models, tmp_path):
    """A secret file that cannot be read stopped every worker as it started; BentoML started
    them again and again, and the server never became ready."""
    missing = tmp_path / "secrets" / "admin.token"
    config = write_config(tmp_path / "gateway.yaml", secrets={"admin_token_file": str(missing)})
    port = str(free_port())
    for command in (["check"], ["serve", "--port", port]):
        result = gateway(*command, "--config", str(config), GATEWAY_ADMIN_TOKEN="")
        assert result.returncode == 2
        assert f"cannot read the secret file {missing}: No such file or directory" in result.stderr


def test_db_upgrade_creates_the_schemas_on_either_backend_and_says_what_is_missing(
    tmp_path, postgres
):
    sqlite = write_config(tmp_path / "sqlite.yaml", data_dir=str(tmp_path / "data"))
    result = gateway("db", "upgrade", "--config", str(sqlite))
    assert result.returncode == 0, result.stderr
    routing, monitor = ROUTING_SCHEMA.version, MONITOR_SCHEMA.version
    assert f"routing schema at version {routing} (sqlite)" in result.stdout
    assert f"monitor schema at version {monitor} (sqlite)" in result.stdout

    shared = write_config(tmp_path / "postgres.yaml", state={"backend": "postgres"})
    dsn = postgres.new_database()
    result = gateway("db", "upgrade", "--config", str(shared), GATEWAY_DATABASE_URL=dsn)
    assert result.returncode == 0, result.stderr
    assert f"routing schema at version {routing} (postgres)" in result.stdout
    assert f"monitor schema at version {monitor} (postgres)" in result.stdout

    result = gateway("db", "upgrade", "--config", str(shared), GATEWAY_DATABASE_URL="")
    assert result.returncode == 2
    assert "$GATEWAY_DATABASE_URL (the database's DSN) is not set" in result.stderr
