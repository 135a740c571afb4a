"""``gateway.yaml``: the one configuration file, validated in full before anything starts.

Unknown keys and bad values are start-up errors that name the key (``ConfigError``), so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Endpoint and variant names: they appear in URLs, headers and metric labels."""


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    host: str = "0.0.0.0"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = False
    latency_slo_ms: float = Field(100.0, gt=0, description="gets its own histogram bucket")


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


class RuntimeConfig(Strict):
    """How onnxruntime runs each model version."""

    intra_op_threads: int = Field(0, ge=0, le=256, description="0 = onnxruntime's default")
    warmup_rows: int = Field(8, ge=1, le=4096)


class LimitsConfig(Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_rows: int = Field(4096, ge=1)
    allow_non_finite: bool = Field(
        False, description="accept NaN/Inf in float inputs (only for models built to take them)"
    )


class VariantConfig(Strict):
    """One variant of an endpoint: a model version from the registry, with its share of traffic."""

    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(description="registry tag name:version")
    weight: float = Field(100.0, ge=0, le=100)
    role: Literal["stable", "candidate", "shadow"] = "stable"

    @field_validator("model")
    @classmethod
    def _tag_has_version(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+", value):
            raise ValueError(f"must be a model tag 'name:version', got {value!r}")
        return value

    @property
    def model_name(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def model_version(self) -> str:
        return self.model.split(":", 1)[1]


class EndpointConfig(Strict):
    variants: list[VariantConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _variants_are_coherent(self) -> EndpointConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        versions = [v.model_version for v in self.variants]
        if len(set(versions)) != len(versions):
            raise ValueError(
                f"each variant must serve a distinct model version (OIP /versions/{{v}} pins by it), "
                f"got {versions}"
            )
        if sum(v.weight for v in self.variants if v.role != "shadow") <= 0:
            raise ValueError("the weights of the non-shadow variants must add up to more than 0")
        return self


class GatewayConfig(Strict):
    server: ServerConfig = ServerConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model_store: Path | None = Field(
        None, description="BentoML home holding the model store (default: BENTOML_HOME)"
    )
    batching: BatchingConfig = BatchingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    limits: LimitsConfig = LimitsConfig()
    endpoints: dict[str, EndpointConfig] = Field(min_length=1)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        for name in value:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"endpoint name {name!r} must match {NAME_PATTERN}")
        return value

    @property
    def model_tags(self) -> list[str]:
        """Every model version some variant names, each once, in config order."""
        tags = [v.model for ep in self.endpoints.values() for v in ep.variants]
        return list(dict.fromkeys(tags))


def _describe(error: ValidationError, source: str) -> str:
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
        raise ConfigError(_describe(error, source)) from None
    if config.model_store is not None and not config.model_store.is_absolute():
        base = Path(source).resolve().parent
        config = config.model_copy(update={"model_store": base / config.model_store})
    return config


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
