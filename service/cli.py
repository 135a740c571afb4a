"""``gateway``: register models, check a config, serve, and run the demo.

BentoML reads its home (where the model store lives) once at import, so this module sets
``BENTOML_HOME`` from ``--model-store`` or the config before importing anything that imports BentoML.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.errors import ConfigError
from service.launch import MONITOR_SERVICE, check_port_free, serve_command, serve_env

MODEL_STORE_ENV = "BENTOML_HOME"


def _use_model_store(path: Path | None) -> None:
    if path is not None:
        os.environ[MODEL_STORE_ENV] = str(Path(path).resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def _models_add(args: argparse.Namespace) -> int:
    from service import registry

    labels = (
        [label.strip() for label in args.class_labels.split(",")] if args.class_labels else None
    )
    card = registry.add_model(
        Path(args.file),
        args.name,
        Path(args.reference),
        version=args.version,
        task=args.task,
        label_column=args.label_column,
        class_labels=labels,
    )
    print(
        f"added {card.tag}: {card.task}, {len(card.feature_names)} features, "
        f"{card.reference_rows} reference rows, sha256 {card.sha256[:12]}"
    )
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from service import registry

    cards = registry.list_cards()
    if args.json:
        print(json.dumps([json.loads(card.to_json()) for card in cards], indent=2))
        return 0
    print(f"{'TAG':32} {'TASK':15} {'FEATURES':>8} {'CLASSES':24} {'SHA256':14} CREATED")
    for card in cards:
        classes = ",".join(str(c) for c in card.class_labels)[:24]
        print(
            f"{card.tag:32} {card.task:15} {len(card.feature_names):>8} {classes:24} "
            f"{card.sha256[:12]:14} {card.created_at}"
        )
    return 0


def _checked_config(path: str):
    """Load the config, point BentoML at its model store, and check models, device and the
    secrets it names (each worker reads them as it starts: a bad one stopped every start)."""
    from service.config import load_config

    config = load_config(path)
    _use_model_store(config.model_store)
    from service.gateway.models import check_models
    from service.secrets import load_secrets
    from service.state import model_tags

    load_secrets(config.secrets)
    return config, check_models(config, model_tags(config.tables()))


def _check(args: argparse.Namespace) -> int:
    config, providers = _checked_config(args.config)
    device = "cuda" if "CUDAExecutionProvider" in providers else "cpu"
    tags = {v.model for table in config.tables().values() for v in table.variants}
    print(
        f"{args.config}: ok; {len(config.endpoints)} endpoint(s), {len(tags)} model "
        f"version(s), device {device}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    config, _ = _checked_config(args.config)
    port, host = args.port or config.server.port, args.host or config.server.host
    if config.server.grpc_port is not None:  # bound by each worker once its models are loaded
        check_port_free(config.server.grpc_port, host)
    command = serve_command(port, host)
    os.execve(command[0], command, serve_env(Path(args.config), port, host))
    return 0  # not reached


def _monitor(args: argparse.Namespace) -> int:
    from service.config import load_config

    config = load_config(args.config)
    _use_model_store(config.model_store)
    from service.secrets import check_exposure, load_secrets

    port, host = args.port or config.monitor.port, args.host or config.monitor.host
    check_exposure(load_secrets(config.secrets), host)
    command = serve_command(port, host, MONITOR_SERVICE)
    os.execve(command[0], command, serve_env(Path(args.config), port, host))
    return 0  # not reached


def _db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the schemas of the configured backend, and say which versions they are
    at (every process does this at start; this runs it alone, e.g. before a rolling upgrade)."""
    from service.config import load_config
    from service.state import open_stores
    from storage.database import StoreUnavailable
    from storage.schema import installed_version

    config = load_config(args.config)
    try:
        stores = open_stores(config)
    except StoreUnavailable as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
    for database, component in ((stores.state.db, "routing"), (stores.records.db, "monitor")):
        version = installed_version(database, component)
        print(f"{component} schema at version {version} ({config.state.backend})")
    stores.close()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo.run import run_demo

    return run_demo(Path(args.home), args.port, serve_only=args.serve_only, requests=args.requests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, help="BentoML home holding the model store")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True
    )
    add = models.add_parser("add", help="register an ONNX model version with its reference data")
    add.add_argument("file", help="the .onnx file")
    add.add_argument("--name", required=True)
    add.add_argument("--version", help="default: generated")
    add.add_argument("--reference", required=True, help="reference rows (.csv or .parquet)")
    add.add_argument("--label-column", default="label")
    add.add_argument("--task", default="auto", choices=["auto", "classification", "regression"])
    add.add_argument(
        "--class-labels", help="comma-separated, in the order of the probability columns"
    )
    add.set_defaults(handler=_models_add)
    listing = models.add_parser("list", help="list registered model versions")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_models_list)

    check = commands.add_parser(
        "check", help="validate a config, its models, the device and the secrets"
    )
    check.add_argument("--config", required=True)
    check.set_defaults(handler=_check)

    serve = commands.add_parser("serve", help="start the gateway (bentoml serve)")
    serve.add_argument("--config", required=True)
    serve.add_argument("--port", type=int)
    serve.add_argument("--host")
    serve.set_defaults(handler=_serve)

    monitor = commands.add_parser("monitor", help="start the monitor (records, labels)")
    monitor.add_argument("--config", required=True)
    monitor.add_argument("--port", type=int)
    monitor.add_argument("--host")
    monitor.set_defaults(handler=_monitor)

    db = commands.add_parser("db", help="the shared state's database").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="create or migrate the schemas (also run at start)")
    upgrade.add_argument("--config", required=True)
    upgrade.set_defaults(handler=_db_upgrade)

    demo = commands.add_parser("demo", help="build demo models, serve them, drive traffic")
    demo.add_argument("--home", required=True, help="directory for models, store and config")
    demo.add_argument("--port", type=int, default=3000)
    demo.add_argument("--serve-only", action="store_true", help="skip the traffic driver")
    demo.add_argument("--requests", type=int, default=2000, help="requests the driver sends")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _use_model_store(args.model_store)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
