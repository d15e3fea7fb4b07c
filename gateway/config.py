"""Gateway settings: defaults < YAML config file < `WARDGATE_*` environment < command-line options.

Every setting is a field of `Settings`; its environment variable is `WARDGATE_<FIELD>` (complex values
such as `api_keys` as JSON). Errors name the file, the line and the field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from policies.yaml_source import YamlSourceError, line_of, read_yaml

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(Exception):
    """A configuration problem, worded for the operator; the CLI prints it without a traceback."""


class ApiKey(BaseModel):
    """One client key. Only its SHA-256 is configured, so a leaked config file leaks no key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Name of the key in logs and audit records.")
    sha256: str = Field(description="Hex SHA-256 of the key; `wardgate keys hash` prints it.")
    tenant: str = Field(min_length=1)
    role: Literal["user", "admin"] = "user"

    @field_validator("sha256")
    @classmethod
    def _is_sha256_hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256_HEX.match(value):
            raise ValueError("must be 64 hex characters (the SHA-256 of the key, not the key itself)")
        return value


def _default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "wardgate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WARDGATE_", extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    upstream: str | None = Field(
        None, description="Base URL of the OpenAI-compatible model server; none: start the bundled one"
    )
    bundled_model_dir: Path | None = Field(None, description="Model for the bundled server; none: the demo model")
    bundled_quantize: Literal["int8", "none"] = "int8"
    upstream_api_key: str | None = Field(None, description="Bearer key the gateway sends upstream")

    max_body_bytes: int = Field(1024 * 1024, ge=1)
    max_upstream_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="non-streamed responses")
    max_concurrency: int = Field(256, ge=1, description="requests in flight at once")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot; beyond this: 429")
    queue_timeout_s: float = Field(5.0, gt=0)

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0, description="longest silence from the upstream")
    total_timeout_s: float = Field(600.0, gt=0, description="longest whole upstream exchange")
    upstream_pool_size: int = Field(256, ge=1)

    api_keys: list[ApiKey] = Field(default_factory=list)
    policy: str = Field(
        "default", description="Policy file; `default` = the shipped policies/default.yaml, `none` = no inspection"
    )
    policy_poll_s: float = Field(0.25, gt=0, description="How often the policy files are checked for changes")
    state_dir: Path = Field(
        default_factory=lambda: _default_state_dir(),
        description="Where local state lives (policy history); default $XDG_STATE_HOME/wardgate",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    otel_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where traces go: OTLP over HTTP, the console (stderr), or nowhere"
    )
    otel_endpoint: str | None = Field(
        None, description="OTLP traces URL, e.g. http://collector:4318/v1/traces; default: OTEL_EXPORTER_OTLP_* "
        "environment"
    )

    audit_dsn: str | None = Field(
        None, description="Audit store: a SQLite file, `postgresql://...`, or `none` (no audit log); "
        "default $state_dir/audit.sqlite3"
    )
    audit_hmac_key: str | None = Field(
        None, repr=False, description="Secret for HMAC-signed checkpoints; default: a key kept in $state_dir"
    )
    audit_signing_key: Path | None = Field(
        None, description="Ed25519 private key (PEM) to sign checkpoints with instead of HMAC"
    )
    audit_checkpoint_every: int = Field(1000, ge=1, description="Sign a checkpoint after this many records...")
    audit_checkpoint_interval_s: float = Field(60.0, gt=0, description="...or after this long, whichever is first")
    audit_queue_size: int = Field(10_000, ge=1, description="Records waiting for commit; beyond: the policy's "
                                  "on_store_failure")
    audit_batch_max: int = Field(512, ge=1, description="Most records committed in one transaction")

    @property
    def policy_history_path(self) -> Path:
        return self.state_dir / "policy-history.sqlite3"

    @property
    def audit_enabled(self) -> bool:
        return self.audit_dsn != "none"

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit.sqlite3"

    @property
    def audit_hmac_key_path(self) -> Path:
        """Where the gateway keeps the HMAC key it made itself when none is configured."""
        return self.state_dir / "audit-hmac.key"

    @field_validator("upstream")
    @classmethod
    def _is_http_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        # Routes are forwarded with their /v1 prefix, so a base URL that already ends in /v1 would
        # double it; accept the common spelling rather than fail on it.
        return re.sub(r"/v1/?$", "", value.rstrip("/"))

    @field_validator("audit_dsn")
    @classmethod
    def _is_audit_store(cls, value: str | None) -> str | None:
        if value is None or value == "none" or "://" not in value:
            return value
        if value.startswith(("postgresql://", "postgres://", "sqlite:///")):
            return value
        raise ValueError("must be a SQLite file path (or sqlite:///path), postgresql://user@host:port/database, "
                         "or none")

    def as_environment(self) -> dict[str, str]:
        """These settings as WARDGATE_* variables, the form worker processes read them in."""
        values = self.model_dump(mode="json", exclude_none=True)
        return {
            f"WARDGATE_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in values.items()
        }


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from all layers; `overrides` are command-line values (None = not given)."""
    cli_values = {name: value for name, value in overrides.items() if value is not None}
    try:
        # Environment and command line, without the file: tells which fields they set explicitly.
        explicit = Settings(**cli_values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "command line / WARDGATE_* environment")) from None
    if config_file is None:
        return explicit
    file_values, root = _read_config_file(config_file)
    merged = {**file_values, **{name: getattr(explicit, name) for name in explicit.model_fields_set}}
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(config_file), root)) from None


def _read_config_file(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The mapping in the file and its YAML node tree (for the line of a bad setting)."""
    try:
        document = read_yaml(path)
    except YamlSourceError as exc:
        if exc.reason == "unreadable":
            raise ConfigError(f"{path}: cannot read config file: {exc.problem}") from None
        raise ConfigError(f"{path}:{exc.line}:{exc.column}: invalid YAML: {exc.problem}") from None
    if document.data is None:
        return {}, None
    if not isinstance(document.data, dict):
        raise ConfigError(f"{path}: the config file must be a mapping of setting names to values")
    return document.data, document.root


def _describe(exc: ValidationError, source: str, root: yaml.Node | None = None) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        where = f"{source}:{line_of(root, error['loc'])}" if root is not None else source
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {field}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(problems)
