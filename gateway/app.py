"""The gateway's ASGI application."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from classifiers.deployment import ClassifierDeployment
from filters.moderation_hook import close_sessions as close_moderation_sessions
from filters.pii import redact_pii
from gateway.audit_trail import RequestAudit, build_writer
from gateway.auth import Authenticator
from gateway.breakers import Breakers
from gateway.config import Settings
from gateway.errors import INTERNAL_ERROR, GatewayError, error_response, on_http_exception
from gateway.exchange import exchange_of
from gateway.limits import AdmissionControl
from gateway.policy_reload import PolicyManager
from gateway.ratelimit import build_rate_limiter
from gateway.rollout import GuardRails
from gateway.routes import OpenAIProxy, Probes, build_routes
from gateway.telemetry import AUDIT_BREAKER, Metrics, RequestTelemetry
from gateway.tracing import configure_tracing, shutdown_tracing
from gateway.upstream import UpstreamClient
from policies.history import PolicyHistory


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (RequestTelemetry logs it with the request id), never to the client.
    response = error_response(request.scope, GatewayError(INTERNAL_ERROR))
    response.headers["x-request-id"] = exchange_of(request.scope).request_id
    return response


DEFAULT_POLICY = Path(str(files("policies").joinpath("default.yaml")))
GIL_SWITCH_INTERVAL_S = 0.0005


def policy_path(setting: str) -> Path | None:
    """`default` = the shipped policy, `none` = no inspection, anything else a policy file."""
    if setting == "none":
        return None
    return DEFAULT_POLICY if setting == "default" else Path(setting)


def create_app(settings: Settings) -> Starlette:
    """Raises PolicyError (file:line) when the configured policy cannot be used."""
    configure_tracing(settings.otel_exporter, settings.otel_endpoint)
    metrics = Metrics()
    breakers = Breakers(settings, metrics)
    upstream = UpstreamClient(settings, breakers, metrics)
    audit = build_writer(settings, metrics) if settings.audit_enabled else None
    rate_limiter = build_rate_limiter(settings, metrics)
    if audit is not None:
        metrics.audit_queue_depth.set_function(lambda: audit.queue_depth)
        # The writer reports each change of its store's breaker; this is where it starts.
        metrics.show_breaker_state(AUDIT_BREAKER, audit.breaker_state)
    path = policy_path(settings.policy)
    policies = None
    if path is not None:
        rails = GuardRails(settings.rollout_watch_s, settings.rollout_min_requests, settings.guard_max_error_rate,
                           settings.guard_max_block_rate_increase, settings.guard_max_p99_inspect_ms)
        policies = PolicyManager(path, metrics, PolicyHistory(settings.policy_history_path), settings.policy_poll_s,
                                 audit, settings.rollout_mode, settings.rollout_canary_share, rails, breakers,
                                 ClassifierDeployment(settings.state_dir))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if audit is not None:
            # Migrates the schema and replays what an earlier run spilled; a store that cannot be
            # opened stops the start: the gateway never serves without its audit trail.
            await asyncio.to_thread(audit.open)
        await upstream.start()
        await breakers.start()
        if policies is not None:
            await policies.start()
        # Everything allocated so far lives as long as the process: keep it out of every future
        # collection (fewer, shorter GC pauses; the proxy's p99 showed them).
        gc.collect()
        gc.freeze()
        # Inspection threads (large scans, the classifier's tokeniser) hold the GIL for long runs of
        # Python; the event loop then waits up to the switch interval each time it wants it back.
        # 0.5 ms instead of 5 ms keeps other requests moving while a huge prompt is inspected.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        # The last line of a quiet start: where to send a first request.
        listening = f"http://{settings.host}:{settings.port}"
        structlog.get_logger("wardgate").info(
            "started", upstream=settings.upstream, auth="api_keys" if settings.api_keys else "off",
            policy=settings.policy, listening=listening, first_request=f"curl -s {listening}/v1/models")
        try:
            yield
        finally:
            if policies is not None:
                await policies.stop()
            await upstream.close()
            await close_moderation_sessions()
            await breakers.stop()
            if rate_limiter is not None:
                await rate_limiter.close()
            if audit is not None:
                await asyncio.to_thread(audit.close)
            shutdown_tracing()

    admission = AdmissionControl(
        max_concurrency=settings.max_concurrency,
        max_queue=settings.max_queue,
        queue_timeout_s=settings.queue_timeout_s,
        metrics=metrics,
    )
    routes = build_routes(
        OpenAIProxy(upstream, settings, policies), Probes(upstream, metrics, breakers, audit),
        Authenticator(settings.api_keys), admission, rate_limiter,
    )
    route_paths = frozenset(route.path for route in routes)
    # Outermost first: telemetry gives the request its id and sees every response as it went out.
    middleware = [Middleware(RequestTelemetry, metrics=metrics, route_paths=route_paths, redact_request_id=redact_pii)]
    if audit is not None:
        middleware.append(Middleware(RequestAudit, writer=audit, route_paths=route_paths))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPException: on_http_exception,
            Exception: _on_unexpected,
        },
        lifespan=lifespan,
    )
    # Starlette answers a path that differs by a trailing slash with a 307 to the URL rebuilt from the
    # client's Host header: an open redirect, before authentication. Such a path is unknown here (404).
    app.router.redirect_slashes = False
    return app
