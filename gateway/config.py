"""Gateway settings: defaults < YAML config file < `WARDGATE_*` environment < command-line options.

Every setting is a field of `Settings`; its environment variable is `WARDGATE_<FIELD>` (complex values
such as `api_keys` as JSON). Errors name the file, the line and the field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
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


class RateLimit(BaseModel):
    """Limits per minute for one tenant or one key; an absent field is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + completion tokens, as the upstream "
                                          "reports them in `usage` (estimated from the texts when it does not)")


class RateLimits(BaseModel):
    """Which limits apply (gateway/ratelimit.py): a tenant's entry under `tenants` replaces `default`
    as a whole; a key listed under `keys` (by id) is limited on top of its tenant's limit."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    default: RateLimit | None = Field(None, description="Each tenant not listed under `tenants`")
    tenants: dict[str, RateLimit] = Field(default_factory=dict)
    keys: dict[str, RateLimit] = Field(default_factory=dict, description="By API key id")

    @property
    def configured(self) -> bool:
        entries = [self.default, *self.tenants.values(), *self.keys.values()]
        return any(entry is not None and (entry.requests_per_minute or entry.tokens_per_minute) for entry in entries)


def _http_base_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    # Routes are forwarded with their /v1 prefix, so a base URL that already ends in /v1 would
    # double it; accept the common spelling rather than fail on it.
    return re.sub(r"/v1/?$", "", value.rstrip("/"))


def _default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "wardgate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WARDGATE_", extra="forbid", validate_default=True)
    # Whether settings that name each other (rate_limits -> api_keys) are checked against each other.
    check_references: ClassVar[bool] = True

    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on")
    workers: int = Field(1, ge=1, description="Worker processes")
    upstream: str | None = Field(
        None, description="Base URL of the OpenAI-compatible model server; none: start the bundled one"
    )
    bundled_model_dir: Path | None = Field(None, description="Model for the bundled server; none: the demo model")
    bundled_quantize: Literal["int8", "none"] = Field(
        "int8", description="Weights of the bundled model server: int8 (quantised) or none (as stored)")
    upstream_api_key: str | None = Field(None, description="Bearer key the gateway sends upstream")
    guard_model_dir: Path | None = Field(
        None, description="Guard model checkpoint for a second bundled model server, which a policy's "
                           "guard_model stage names as `url: bundled`; none: no such server")

    max_body_bytes: int = Field(1024 * 1024, ge=1, description="Largest request body; refused while reading "
                                "(413 WG4004)")
    max_upstream_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest non-streamed upstream "
                                         "response, and largest single SSE event")
    max_concurrency: int = Field(256, ge=1, description="Requests in flight at once (streams hold "
                                 "their slot to the end)")
    max_queue: int = Field(256, ge=0, description="Requests allowed to wait for a slot; "
                           "beyond: 429 WG5001 with Retry-After")
    queue_timeout_s: float = Field(5.0, gt=0, description="Longest wait for a slot; beyond: 429 WG5001")

    # The inspection budget (gateway/request_texts.py): what one request may ask the input stages to
    # read, refused with 413 WG4012 before any stage runs. The characters are bounded by the body
    # (at most one per byte) unless max_body_bytes is raised; the counts bound the per-text work.
    max_inspect_chars: int = Field(1024 * 1024, ge=1, description="Most characters of text one request may carry "
                                   "for inspection (every message, part, name, tool definition, prompt, input)")
    max_messages: int = Field(2048, ge=1, description="Most messages in one chat request")
    max_texts: int = Field(4096, ge=1, description="Most separate texts in one request (contents, parts, names, "
                           "tool definitions and arguments, prompts, inputs)")

    # What a client may take of the server before its request is whole (gateway/http_server.py,
    # gateway/request_body.py): a slow client holds a socket for a bounded time, and no slot.
    body_timeout_s: float = Field(10.0, gt=0, description="Longest time to receive a request body (each body's "
                                  "deadline is drawn between 75% and 100% of it, so that connections opened together "
                                  "do not all time out together); beyond: 408 WG4007 and the connection closes")
    header_timeout_s: float = Field(10.0, gt=0, description="Longest time from a request's first byte (or the "
                                    "connection's opening) to the end of its headers; beyond: disconnected")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest request line plus headers; beyond: "
                                  "431 WG4008 and the connection closes")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="How long an idle keep-alive connection stays open")
    refusal_floor_ms: float = Field(100.0, ge=0, description="A request refused for what it carries (blocked input, "
                                    "content or size beyond the policy or the inspection budget) is answered no "
                                    "sooner than this after it arrived; 0: at once")

    connect_timeout_s: float = Field(5.0, gt=0, description="Upstream connect timeout")
    read_timeout_s: float = Field(60.0, gt=0, description="Longest upstream silence, also "
                                  "between stream chunks; beyond: 504 WG2002")
    total_timeout_s: float = Field(600.0, gt=0, description="Longest whole upstream exchange, "
                                   "streams included")
    upstream_pool_size: int = Field(256, ge=1, description="Pooled upstream connections")

    api_keys: list[ApiKey] = Field(default_factory=list, description="Client keys: a list of `{id, tenant, "
                                   "sha256, role}`; empty: no authentication")
    policy: str = Field(
        "default", description="Policy file; `default` = the shipped policies/default.yaml, `none` = no inspection"
    )
    policy_poll_s: float = Field(0.25, gt=0, description="How often the policy files are checked for changes")
    # Rollout of a changed policy under guard rails (gateway/rollout.py).
    rollout_mode: Literal["direct", "canary", "shadow"] = Field(
        "direct", description="A new policy version serves all traffic at once, a canary share, or runs in shadow")
    rollout_canary_share: float = Field(0.1, gt=0, le=1, description="Share of requests a canary version serves")
    rollout_watch_s: float = Field(60.0, gt=0, description="How long a new version is watched by the guard rails")
    rollout_min_requests: int = Field(20, ge=1, description="Requests a version must see before it is judged")
    guard_max_error_rate: float = Field(0.05, ge=0, le=1, description="Rollback above this share of WG9xxx errors")
    guard_max_block_rate_increase: float = Field(
        0.25, ge=0, le=1, description="Rollback when the block rate rises more than this over the previous version")
    guard_max_p99_inspect_ms: float = Field(250.0, gt=0, description="Rollback above this p99 inspection time")
    state_dir: Path = Field(
        default_factory=lambda: _default_state_dir(),
        description="Local state: the policy history and the default audit log (SQLite), the audit HMAC and "
        "subject keys, spill and dead-letter files (files 0600, directories 0700); default $XDG_STATE_HOME/wardgate",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe log "
                                                                    "lines written")

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
    audit_commit_timeout_s: float = Field(5.0, gt=0, description="Longest wait for a record's commit; beyond: "
                                          "the policy's on_store_failure")
    audit_breaker_fail_max: int = Field(3, ge=1, description="Failed audit commits in a row (errors, or commits "
                                        "slower than audit_commit_timeout_s) that open the audit store's breaker")
    audit_breaker_reset_s: float = Field(1.0, gt=0, description="How long the audit store's breaker stays open "
                                         "(records spill or are refused at once) before one attempt probes the store")

    # Rate limits per tenant and per API key (gateway/ratelimit.py).
    rate_limits: RateLimits = Field(default_factory=RateLimits, description="Requests and tokens per minute: "
                                    "`default`, `tenants`, `keys`")
    redis_url: str | None = Field(
        None, description="Redis for state shared across replicas: rate limits, circuit breakers"
    )
    redis_prefix: str = Field("wardgate:", min_length=1, description="Prefix of every key the gateway keeps in Redis")

    # Circuit breakers and upstream resilience (gateway/breakers.py, gateway/upstream.py).
    fallback_upstreams: list[str] = Field(
        default_factory=list, description="Model servers to use, in order, when the upstream's breaker is open or "
        "an attempt fails in a retryable way")
    breaker_fail_max: int = Field(5, ge=1, description="Consecutive failures that open a circuit breaker")
    # 500 is left out by default: model servers answer it for one generation that failed, not for an
    # outage. Add it for a model server that answers 500 when it is broken as a whole.
    breaker_failure_statuses: list[Annotated[int, Field(ge=500, le=599)]] = Field(
        default_factory=lambda: [502, 503, 504],
        description="Upstream statuses that count against its circuit breaker (5xx only)")
    breaker_reset_timeout_s: float = Field(30.0, gt=0, description="How long a breaker stays open before one "
                                           "trial call")
    upstream_max_retries: int = Field(2, ge=0, description="Most retries of one request (connect errors, 502/503)")
    retry_budget_ratio: float = Field(0.1, ge=0, le=1, description="Retries may add at most this share of requests")
    retry_deadline_s: float = Field(5.0, gt=0, description="No retry starts later than this after the first "
                                    "attempt; a longer upstream Retry-After is passed to the client instead")

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

    @field_validator("fallback_upstreams")
    @classmethod
    def _are_http_base_urls(cls, values: list[str]) -> list[str]:
        return [_http_base_url(value) for value in values]

    @field_validator("upstream")
    @classmethod
    def _is_http_base_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_base_url(value)

    @field_validator("redis_url")
    @classmethod
    def _is_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        return value

    @model_validator(mode="after")
    def _rate_limits_name_known_keys(self) -> Settings:
        # A typo in a key id or tenant name would silently leave that client unlimited.
        if not self.check_references:
            return self
        tenants = {key.tenant for key in self.api_keys} or {"default"}
        unknown_keys = sorted(set(self.rate_limits.keys) - {key.id for key in self.api_keys})
        unknown_tenants = sorted(set(self.rate_limits.tenants) - tenants)
        if unknown_keys:
            raise ValueError(f"rate_limits.keys names API key ids that are not in api_keys: {', '.join(unknown_keys)}")
        if unknown_tenants:
            raise ValueError(f"rate_limits.tenants names tenants that no API key has: {', '.join(unknown_tenants)} "
                             f"(known: {', '.join(sorted(tenants))})")
        return self

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


class _WithoutConfigFile(Settings):
    """The environment and command line alone. What they name may be in the config file (rate limits
    for its API keys), so references are checked once the layers are merged."""

    check_references = False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from all layers; `overrides` are command-line values (None = not given)."""
    cli_values = {name: value for name, value in overrides.items() if value is not None}
    try:
        # Environment and command line, without the file: tells which fields they set explicitly.
        explicit = (Settings if config_file is None else _WithoutConfigFile)(**cli_values)
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
