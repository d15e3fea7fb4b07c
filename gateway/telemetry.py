"""Structured JSON logs and Prometheus metrics.

One JSON object per line on stdout: the access line of every request (request id, tenant, route,
status, latency, upstream latency) and everything the libraries underneath log (uvicorn, aiohttp),
so that a log shipper needs one parser.

Telemetry reads no text itself: what masks personal data in log lines and traces is given to it
(the gateway's is filters/pii.py), so that it imports nothing from the moderation side and the
bundled model server can use it alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable

import orjson
import pybreaker
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.exchange import Exchange, begin_exchange
from gateway.log_filters import OPERATOR_FIELDS, LibraryChatterToDebug, quiet_libraries
from gateway.tracing import RequestSpan, tracing_enabled
from gateway.verdict import Escalation

# Masks personal data and secrets in a text (filters.pii.redact_pii for the gateway).
Redact = Callable[[str], str]

# wardgate_breaker_state's values.
BREAKER_STATE_CODES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
# The audit store's breaker (privacy/audit/writer.py) among the gateway's (gateway/breakers.py).
AUDIT_BREAKER = "audit"
# Proxy overhead is sub-millisecond and model calls take seconds: buckets must resolve both.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _orjson_text(event: dict, **_: object) -> str:
    return orjson.dumps(event, default=str).decode()


# Fields that hold identifiers the gateway made or checked, never free text. (A request id is the
# client's text: the access line carries it masked already, other lines have it masked here.)
_NOT_TEXT = frozenset({"event", "timestamp", "level", "logger", "trace_id", "route", "method", "status", "tenant",
                       "latency_ms", "upstream_ms", "error_code", "policy_digest", *OPERATOR_FIELDS})


class RedactPersonalData:
    """structlog processor: personal data and secrets are masked (by `redact`) in every logged string.
    The access line is built from identifiers and numbers only; its one free-form field is the path
    of an unmatched route, so only that is scanned there (it is the hot path)."""

    def __init__(self, redact: Redact) -> None:
        self.redact = redact

    def __call__(self, _: object, __: str, event: dict) -> dict:
        if event.get("event") == "request" and "exception" not in event:
            if event.get("route") == "unmatched" and isinstance(event.get("path"), str):
                event["path"] = self.redact(event["path"])
            return event
        for key, value in event.items():
            if isinstance(value, str) and key not in _NOT_TEXT:
                event[key] = self.redact(value)
        return event


def configure_logging(level: str, redact: Redact, component: str | None = None) -> None:
    """JSON lines on stdout for structlog and the standard library alike. `component` is added to
    every line (the bundled model server's say so, beside the gateway's in one console)."""
    redact_personal_data = RedactPersonalData(redact)
    numeric_level = logging.getLevelName(level.upper())
    quiet_libraries(numeric_level)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component is not None:
        def add_component(_: object, __: str, event: dict) -> dict:
            event["component"] = component
            return event

        shared.append(add_component)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact_personal_data,
            # orjson straight to bytes: the access line is on the hot path (measured 11.6 -> 7.7 us).
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(LibraryChatterToDebug(numeric_level))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_personal_data,
                structlog.processors.JSONRenderer(serializer=_orjson_text),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # uvicorn installs its own handlers unless told otherwise; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


# The *_created series double the output and no dashboard uses them.
disable_created_metrics()


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wardgate_requests_total", "Requests answered, by route and HTTP status.",
            ["route", "status"], registry=self.registry,
        )
        self.errors = Counter(
            "wardgate_errors_total", "Coded errors returned to clients, by error code.",
            ["code"], registry=self.registry,
        )
        self.request_duration = Histogram(
            "wardgate_request_duration_seconds", "Time from request start to response end.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "wardgate_upstream_duration_seconds", "Time until the upstream's response headers arrived.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge(
            "wardgate_requests_in_flight", "Requests holding a concurrency slot.", registry=self.registry,
        )
        self.queued = Gauge(
            "wardgate_requests_queued", "Requests waiting for a concurrency slot.", registry=self.registry,
        )
        self.rejected = Counter(
            "wardgate_requests_rejected_total", "Requests refused for lack of capacity (429).",
            registry=self.registry,
        )
        self.policy_info = Gauge(
            "wardgate_policy_info", "The active policy: 1 for its version and content digest (sha256).",
            ["version", "digest"], registry=self.registry,
        )
        self.policy_reloads = Counter(
            "wardgate_policy_reloads_total", "Changed policy files seen: activated, or refused (invalid, or "
            "a golden test failed; the running policy stays).", ["result"], registry=self.registry,
        )

        self.policy_rollbacks = Counter(
            "wardgate_policy_rollbacks_total", "Policy versions taken out of service automatically because they "
            "broke a guard rail, by rollout mode.", ["mode"], registry=self.registry,
        )
        self.shadow_differences = Counter(
            "wardgate_policy_shadow_differences_total", "Requests on which a shadow policy version decided "
            "differently from the enforced one.", registry=self.registry,
        )
        self.decisions = Counter(
            "wardgate_decisions_total", "Inspection verdicts, by direction, action, category and rule.",
            ["direction", "action", "category", "rule_id"], registry=self.registry,
        )
        self.moderation_bypass = Counter(
            "wardgate_moderation_bypass_total", "Requests on which the moderation hook gave no answer, by "
            "direction and what the stage's on_failure made of it (block, allow, flag).",
            ["direction", "outcome"], registry=self.registry,
        )
        # Guard model cascades (gateway/pipeline.py GuardModelInspector). The escalation rate of a direction is
        # wardgate_guard_escalations_total over wardgate_decisions_total of that direction.
        self.guard_escalations = Counter(
            "wardgate_guard_escalations_total", "Texts a guard model was asked about, by direction, trigger (band, "
            "sample, always) and the guard's verdict (safe, unsafe, controversial, failed).",
            ["direction", "trigger", "verdict"], registry=self.registry,
        )
        self.guard_duration = Histogram(
            "wardgate_guard_duration_seconds", "A guard model's latency per escalated text (cache hits excluded).",
            ["direction"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.guard_agreement = Counter(
            "wardgate_guard_agreement_total", "Escalations by what the earlier stage's score said at 0.5 (unsafe, "
            "safe, none when it measured none) and what the guard said: the cascade's confusion matrix.",
            ["direction", "earlier", "guard"], registry=self.registry,
        )
        self.stage_duration = Histogram(
            "wardgate_stage_duration_seconds", "Time a request spent in each inspection stage.",
            ["direction", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.audit_records = Counter(
            "wardgate_audit_records_total", "Audit records: committed to the store, spilled to the local "
            "file (replayed later), failed (the request was refused with WG5002), or dead_lettered (refused by "
            "the store for what it holds: kept in a dead-letter file, an event in the log names it).", ["result"],
            registry=self.registry,
        )
        self.audit_commit_duration = Histogram(
            "wardgate_audit_commit_duration_seconds", "Time to commit one group of audit records.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.audit_queue_depth = Gauge(
            "wardgate_audit_queue_depth", "Audit records waiting for their commit.", registry=self.registry,
        )
        # Rate limits (gateway/ratelimit.py).
        self.rate_limited = Counter(
            "wardgate_rate_limited_total", "Requests refused by a rate limit (WG5003, WG5004), by the limit with "
            "the longest wait: scope tenant|key, kind requests|tokens.", ["scope", "kind"], registry=self.registry,
        )
        self.rate_limit_unenforced = Counter(
            "wardgate_rate_limit_unenforced_total", "Requests let through without a rate-limit check because the "
            "shared store (Redis) failed or was being skipped after a failure.", registry=self.registry,
        )

        # Circuit breakers and upstream resilience (gateway/breakers.py, gateway/upstream.py).
        self.breaker_state = Gauge(
            "wardgate_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["name"],
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "wardgate_breaker_transitions_total", "Circuit breaker state changes this process made or saw.",
            ["name", "to"], registry=self.registry,
        )
        self.upstream_retries = Counter(
            "wardgate_upstream_retries_total", "Upstream attempts retried, by the failure that caused the retry.",
            ["reason"], registry=self.registry,
        )
        self.upstream_fallbacks = Counter(
            "wardgate_upstream_fallbacks_total", "Attempts sent to a fallback upstream.", ["upstream"],
            registry=self.registry,
        )

        # labels() validates and locks on every call; the label sets are few, so keep the children.
        self._by_route_status: dict[tuple[str, int], tuple[Counter, Histogram, Histogram]] = {}
        self._decisions: dict[tuple[str, str, str, str], Counter] = {}

    def record_request(self, route: str, status: int, elapsed_s: float, upstream_s: float | None,
                       error_code: str | None) -> None:
        children = self._by_route_status.get((route, status))
        if children is None:
            children = (
                self.requests.labels(route, str(status)),
                self.request_duration.labels(route),
                self.upstream_duration.labels(route),
            )
            self._by_route_status[(route, status)] = children
        requests, request_duration, upstream_duration = children
        requests.inc()
        request_duration.observe(elapsed_s)
        if upstream_s is not None:
            upstream_duration.observe(upstream_s)
        if error_code:
            self.errors.labels(error_code).inc()

    def record_inspection(self, verdicts: dict, stage_ms: dict) -> None:
        for direction, verdict in verdicts.items():
            key = (direction, verdict.action, verdict.category or "", verdict.rule_id or "")
            decision = self._decisions.get(key)
            if decision is None:  # rule ids come from policies: a bounded set, like routes and statuses
                decision = self._decisions[key] = self.decisions.labels(*key)
            decision.inc()
            if verdict.bypass is not None:
                self.moderation_bypass.labels(direction, verdict.bypass.outcome).inc()
            for escalation in verdict.escalations:
                self._record_escalation(direction, escalation)
        for direction, stages in stage_ms.items():
            for stage, milliseconds in stages.items():
                self.stage_duration.labels(direction, stage).observe(milliseconds / 1000)

    def _record_escalation(self, direction: str, escalation: Escalation) -> None:
        self.guard_escalations.labels(direction, escalation.trigger.split(":")[0], escalation.verdict).inc()
        if escalation.ms is not None:
            self.guard_duration.labels(direction).observe(escalation.ms / 1000)
        if escalation.verdict != "failed":
            earlier = "none" if escalation.score is None else "unsafe" if escalation.score >= 0.5 else "safe"
            self.guard_agreement.labels(direction, earlier, escalation.verdict).inc()

    # AuditObserver: what the audit writer reports.
    def committed(self, records: int, seconds: float) -> None:
        self.audit_records.labels("committed").inc(records)
        self.audit_commit_duration.observe(seconds)

    def spilled(self, records: int) -> None:
        self.audit_records.labels("spilled").inc(records)

    def failed(self, records: int) -> None:
        self.audit_records.labels("failed").inc(records)

    def dead_lettered(self, records: int) -> None:
        self.audit_records.labels("dead_lettered").inc(records)

    def breaker_changed(self, state: str) -> None:
        self.set_breaker_state(AUDIT_BREAKER, state)

    def show_breaker_state(self, name: str, state: str) -> None:
        """A circuit breaker's state (closed, half-open, open) on the gauge: where it starts, or a change."""
        self.breaker_state.labels(name).set(BREAKER_STATE_CODES[state])

    def set_breaker_state(self, name: str, state: str) -> None:
        """A circuit breaker's new state: the gauge and the transition count."""
        self.show_breaker_state(name, state)
        self.breaker_transitions.labels(name, state).inc()

    def set_active_policy(self, version: str, digest: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version, digest).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID_LENGTH = 128
# What the access line carries of the exchange besides its fixed fields, where the request got that far.
_LOGGED_WHEN_KNOWN = ("trace_id", "policy_version", "policy_digest", "input_verdict", "output_verdict",
                      "inspect_input_ms", "upstream_attempts")


def _client_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's X-Request-ID, if it is safe to echo into headers and logs."""
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            if 0 < len(value) <= _MAX_REQUEST_ID_LENGTH and value.isascii() and value.decode().isprintable():
                return value.decode()
            return None
    return None


class RequestTelemetry:
    """ASGI middleware: request id (accepted or generated, echoed), one access log line, metrics.

    It sits outermost so that every response, refusals by later middleware included (the audit's
    among them), carries the request id and is counted as it went out.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, route_paths: frozenset[str],
                 redact_request_id: Redact | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.redact_request_id = redact_request_id
        # Requests refused before routing (401, 429) still count under their route; any other path
        # is "unmatched", so that scanners cannot blow up the metric's cardinality.
        self.route_paths = route_paths
        self.log = structlog.get_logger("wardgate.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client_id = _client_request_id(scope["headers"])
        request_id = client_id or os.urandom(16).hex()
        # A client's id may hold personal data (an e-mail address): logs and traces get it masked, once
        # per request; the client and the upstream get it as it was sent.
        logged_id = self.redact_request_id(client_id) if client_id and self.redact_request_id else request_id
        exchange = begin_exchange(scope, request_id)
        id_header = (_REQUEST_ID_HEADER, request_id.encode())
        status = 0

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        span = RequestSpan(scope["headers"], scope["method"], self._route_label(scope["path"])) \
            if tracing_enabled() else None
        if span is not None:
            exchange.trace_id = span.trace_id
        # Whatever else is logged while this request runs names it (and its trace) too.
        structlog.contextvars.bind_contextvars(request_id=logged_id)
        if span is not None:
            structlog.contextvars.bind_contextvars(trace_id=span.trace_id)
        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_request_id)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            status = self._record(scope, exchange, logged_id, status, time.perf_counter() - started, failure)
            structlog.contextvars.clear_contextvars()
            if span is not None:
                span.end(status, {"wardgate.request_id": logged_id, "wardgate.tenant": exchange.tenant,
                                  "wardgate.error_code": exchange.error_code})

    def _route_label(self, path: str) -> str:
        return path if path in self.route_paths else "unmatched"

    def _record(
        self, scope: Scope, exchange: Exchange, logged_id: str, status: int, elapsed: float,
        failure: BaseException | None,
    ) -> int:
        """Metrics and the access line; returns the status as recorded."""
        route_label = self._route_label(scope["path"])
        if status == 0:
            # No response started: the app crashed before answering (ServerErrorMiddleware then
            # answers 500), or the client went away first (499, nginx's convention).
            status = 499 if exchange.client_disconnected else 500
        error_code = exchange.error_code
        upstream_s = exchange.upstream_s
        self.metrics.record_request(route_label, status, elapsed, upstream_s, error_code)
        if exchange.verdicts:
            self.metrics.record_inspection(exchange.verdicts, exchange.stage_ms)
        fields = {
            "request_id": logged_id,
            "tenant": exchange.tenant,
            "method": scope["method"],
            "route": route_label,
            "path": scope["path"],
            "status": status,
            "latency_ms": round(elapsed * 1000, 3),
            "upstream_ms": round(upstream_s * 1000, 3) if upstream_s is not None else None,
        }
        if error_code:
            fields["error_code"] = error_code
        if exchange.client_disconnected:
            fields["client_disconnected"] = True
        for name in _LOGGED_WHEN_KNOWN:
            value = getattr(exchange, name)
            if value is not None:
                fields[name] = value
        if failure is not None and not isinstance(failure, asyncio.CancelledError):
            self.log.error("request", **fields, exc_info=failure)
        else:
            self.log.info("request", **fields)
        return status
