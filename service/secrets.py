"""The shared secrets, read once per process: from the environment, else from a file the config
names (a mounted Kubernetes Secret, or what ``gateway demo`` generated).

- admin token: the admin API, and reports and metrics when ``access`` says ``token``;
- monitor token: every route of the monitor; gateways send it with records, labels and the calls
  they pass through;
- metrics token: a read-only credential for Prometheus (``/metrics`` only);
- webhook secret: the HMAC key webhook deliveries are signed with.

Rotating one means changing it where it is read and restarting the processes that read it (see
docs/operations.md, "Security").
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets as random_source
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config import SecretsConfig
from service.errors import ConfigError

log = logging.getLogger("gateway.secrets")
ADMIN_TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"
MONITOR_TOKEN_ENV = "GATEWAY_MONITOR_TOKEN"
METRICS_TOKEN_ENV = "GATEWAY_METRICS_TOKEN"
WEBHOOK_SECRET_ENV = "GATEWAY_WEBHOOK_SECRET"
MIN_LENGTH = 16
"""Shorter secrets get a warning at start: a token is a password nobody has to type."""


@dataclass(frozen=True)
class Secrets:
    admin_token: str | None = None
    monitor_token: str | None = None
    metrics_token: str | None = None
    webhook_secret: str | None = None


def _read(env: str, path: Path | None) -> str | None:
    value = os.environ.get(env, "").strip()
    if not value and path is not None:
        try:
            value = path.read_text().strip()
        except OSError as error:
            raise ConfigError(f"cannot read the secret file {path}: {error.strerror}") from None
    if not value:
        return None
    if len(value) < MIN_LENGTH:
        source = env if os.environ.get(env, "").strip() else str(path)
        log.warning("the secret in %s is shorter than %d characters", source, MIN_LENGTH)
    return value


def load_secrets(config: SecretsConfig) -> Secrets:
    """Every secret the config and the environment provide (``ConfigError`` for a bad one)."""
    return Secrets(
        admin_token=_read(ADMIN_TOKEN_ENV, config.admin_token_file),
        monitor_token=_read(MONITOR_TOKEN_ENV, config.monitor_token_file),
        metrics_token=_read(METRICS_TOKEN_ENV, config.metrics_token_file),
        webhook_secret=_read(WEBHOOK_SECRET_ENV, config.webhook_secret_file),
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The ``Authorization: Bearer`` token in ``headers``, if any."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def presents(headers: Mapping[str, str], *accepted: str | None) -> bool:
    """Whether ``headers`` carry one of the ``accepted`` secrets as a bearer token (compared in
    constant time; a secret that is not configured never matches)."""
    token = bearer_token(headers)
    return token is not None and any(
        secret is not None and hmac.compare_digest(token.encode(), secret.encode())
        for secret in accepted
    )


def new_secret() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return random_source.token_urlsafe(32)


def write_secret_file(path: Path) -> Path:
    """Create ``path`` with a new secret, readable by its owner only, unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(new_secret() + "\n")
    return path


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(secrets: Secrets, host: str | None) -> None:
    """Refuse to serve an open monitor anywhere but on loopback (``ConfigError``)."""
    if secrets.monitor_token is not None:
        return
    if host is None or not is_loopback(host):
        raise ConfigError(
            f"the monitor would listen on {host or 'an unknown address'} without a secret: set "
            f"GATEWAY_MONITOR_TOKEN (or secrets.monitor_token_file), or listen on 127.0.0.1"
        )
    log.warning("the monitor has no GATEWAY_MONITOR_TOKEN: anyone on this machine may call it")
