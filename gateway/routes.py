"""The HTTP routes: OpenAI-compatible endpoints proxied upstream, plus health, readiness, metrics."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin_audit import AdminAuditEndpoint
from gateway.audit_trail import note_completion, note_request
from gateway.auth import Authenticator
from gateway.breakers import Breakers
from gateway.config import Settings
from gateway.enforcement import refusal_response
from gateway.errors import (
    BODY_TOO_LARGE,
    INSPECTION_BUDGET_EXCEEDED,
    NON_TEXT_CONTENT,
    POLICY_BLOCKED_INPUT,
    UNKNOWN_CONTENT,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_SERVER_ERROR,
    GatewayError,
    error_response,
)
from gateway.exchange import exchange_of
from gateway.limits import AdmissionControl
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.openapi import openapi_route
from gateway.policy_reload import AdminPolicyEndpoint, PolicyManager
from gateway.ratelimit import RateLimiter
from gateway.request_body import ClientDisconnected, RequestModel, parse_request, read_body
from gateway.request_texts import InspectionBudget
from gateway.streaming import CancelOnDisconnect, RawResponse, SSERelayResponse
from gateway.telemetry import Metrics
from gateway.tracing import child_span, trace_headers
from gateway.upstream import (
    UpstreamClient,
    request_headers_for_upstream,
    response_headers_for_client,
    transport_error,
)
from gateway.verdict import ALLOW
from privacy.audit.writer import AuditWriter

# nginx's convention for "client closed the connection first"; only logs and metrics ever see it.
CLIENT_CLOSED_REQUEST = 499

# Watch for a vanished client only once an upstream answer takes longer than this (see CancelOnDisconnect).
DISCONNECT_WATCH_GRACE_S = 0.05

# Bodies up to this size are validated on the event loop (a thread hop costs more than their parse).
PARSE_ON_LOOP_MAX_BYTES = 64 * 1024


class ProxyEndpoint:
    """The ASGI endpoint of one /v1 route: authenticate, admit, validate, relay.

    Authentication and admission live here rather than in middleware because they apply to exactly
    these routes, and because every middleware layer is one more frame that each await of every
    request passes through: on the proxy's hot path that measurably cost throughput.
    """

    def __init__(
        self,
        proxy: OpenAIProxy,
        request_model: type[RequestModel] | None,
        authenticator: Authenticator,
        admission: AdmissionControl,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.proxy = proxy
        self.request_model = request_model
        self.authenticator = authenticator
        self.admission = admission
        self.rate_limiter = rate_limiter  # None: no limit configured, nothing to run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        try:
            self.authenticator.authenticate(scope)
            if self.rate_limiter is not None:
                send = await self.rate_limiter.admit(scope, send)  # adds the x-ratelimit-* headers
        except GatewayError as error:
            await error_response(scope, error)(scope, receive, send)
            return
        admitted = False
        try:
            try:
                # The whole body first, under its deadline: a slot (and a place in the queue) is for
                # waiting on inspection and the upstream, never on a client's upload.
                body = None if self.request_model is None else await read_body(
                    scope, receive, self.proxy.max_body_bytes, self.proxy.settings.body_timeout_s)
                await self.admission.enter()
                admitted = True
                response = await self.proxy.relay(scope, receive, self.request_model, body)
            except GatewayError as error:
                response = error_response(scope, error)
            except ClientDisconnected:
                response = Response(status_code=CLIENT_CLOSED_REQUEST)
            if _refused_for_content(scope):
                if admitted:  # the wait below holds no slot
                    self.admission.leave()
                    admitted = False
                await asyncio.sleep(self.proxy.settings.refusal_floor_ms / 1000 - (time.monotonic() - arrived))
            await response(scope, receive, send)
        finally:
            if admitted:
                self.admission.leave()
            policies = self.proxy.policies
            if policies is not None:
                exchange = exchange_of(scope)
                policies.observe(exchange)
                if policies.candidate is not None and exchange.input_texts is not None:
                    policies.spawn_shadow(exchange.input_texts, scope)
            if self.rate_limiter is not None:  # tokens are known once the response has ended
                await self.rate_limiter.charge(scope)


# What a client is refused for what it sent, rather than for the gateway's or the model's state.
CONTENT_REFUSALS = frozenset(kind.code for kind in (
    POLICY_BLOCKED_INPUT, INSPECTION_BUDGET_EXCEEDED, BODY_TOO_LARGE, UNKNOWN_CONTENT, NON_TEXT_CONTENT))


def _refused_for_content(scope: Scope) -> bool:
    """Whether the request is refused for what it carries: answered with one of CONTENT_REFUSALS, or
    (`on_block: refusal`) with a refusal message for blocked input. Such an answer waits until
    `refusal_floor_ms` after the request arrived. It then tells nothing by its timing of which stage
    refused (a blacklist hit answers in a millisecond, a classifier block in several: an oracle for
    whoever probes the policy with variants), and a client that repeats refused requests in a loop,
    probing or flooding, gets at most one answer per floor per connection, at the cost of a timer."""
    exchange = exchange_of(scope)
    if exchange.error_code is not None:
        return exchange.error_code in CONTENT_REFUSALS
    return exchange.verdicts.get("input", ALLOW).action == "block"


class OpenAIProxy:
    """Validates OpenAI requests and relays them to the upstream model server."""

    def __init__(self, upstream: UpstreamClient, settings: Settings, policies: PolicyManager | None) -> None:
        self.upstream = upstream
        self.policies = policies
        self.max_body_bytes = settings.max_body_bytes
        self.max_upstream_body_bytes = settings.max_upstream_body_bytes
        self.upstream_api_key = settings.upstream_api_key
        self.budget = InspectionBudget(settings.max_inspect_chars, settings.max_messages, settings.max_texts)
        self.settings = settings  # for the admin routes that need more of it (GET /admin/audit)

    async def relay(self, scope: Scope, receive: Receive, request_model: type[RequestModel] | None,
                    body: bytes | None) -> ASGIApp:
        """Check the request (when `request_model` is given, `body` is its body), forward it, and return
        the response to send: the upstream's, relayed, or a coded error."""
        exchange = exchange_of(scope)
        stream = False
        inspect_output = False
        # One policy version for the whole exchange, input and output, even if a reload lands meanwhile.
        enforcer = None
        if self.policies is not None:
            # A canary version takes its share of requests (by request id); see gateway/rollout.py.
            enforcer = self.policies.enforcer_for(exchange.request_id)
            exchange.audit_settings = enforcer.policy.audit
            if request_model is None:
                enforcer = None
        if request_model is not None:
            parsed = await _parsed(request_model, body, self.budget if enforcer is not None else None)
            stream = getattr(parsed, "stream", False)
            note_request(exchange, parsed)
            if enforcer is not None:
                exchange.policy_version = enforcer.policy.version
                exchange.policy_digest = enforcer.digest
                exchange.classifier_digest = enforcer.classifier_digest
                exchange.version_key = enforcer.version_key
                verdict, body = await enforcer.check_request(parsed.walk(), body, scope, self.budget)
                if verdict.action == "block":  # on_block: refusal
                    return refusal_response(parsed, enforcer.policy.on_block.message)
                inspect_output = request_model is not EmbeddingRequest
        # Unless redacted, the original bytes go upstream, not a re-serialisation: the model
        # server sees exactly what the client sent.
        headers = request_headers_for_upstream(scope["headers"], exchange.request_id, self.upstream_api_key)
        path = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        started = time.perf_counter()
        async with CancelOnDisconnect(scope, receive, grace_s=DISCONNECT_WATCH_GRACE_S):
            with child_span("upstream", SpanKind.CLIENT, **{"http.request.method": scope["method"]}) as span:
                context_headers = trace_headers()
                if context_headers:  # the model server continues our trace, not the client's
                    headers = [header for header in headers if header[0] not in ("traceparent", "tracestate")]
                    headers += context_headers
                upstream = await self.upstream.send(scope["method"], path, headers, body, exchange)
                if span is not None:
                    span.set_attribute("http.response.status_code", upstream.status)
            exchange.upstream_s = time.perf_counter() - started
            exchange.upstream_status = upstream.status
            client_headers = response_headers_for_client(upstream.raw_headers)
            if stream and upstream.status == 200 and upstream.content_type == "text/event-stream":
                checker = enforcer.stream_checker(scope) if inspect_output else None
                return SSERelayResponse(upstream, client_headers, self.max_upstream_body_bytes, checker)
            try:
                payload = await self._read_whole(upstream)
            finally:
                upstream.release()
        document = _check_complete_response(upstream.status, payload)
        if document is not None and request_model is not None:
            note_completion(exchange, document)
        if inspect_output and upstream.status == 200:
            verdict, payload = await enforcer.check_completion(document, payload, scope)
            if verdict.action == "block":  # on_block: refusal
                return refusal_response(parsed, enforcer.policy.on_block.message)
        return RawResponse(upstream.status, client_headers, payload)

    async def _read_whole(self, upstream: aiohttp.ClientResponse) -> bytes:
        limit = self.max_upstream_body_bytes
        if upstream.content_length is not None and upstream.content_length > limit:
            raise GatewayError(UPSTREAM_BAD_RESPONSE, f"The model server's response exceeds {limit} bytes.")
        try:
            if upstream.content_length is not None:
                return await upstream.read()
            chunks, size = [], 0
            async for chunk in upstream.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise GatewayError(UPSTREAM_BAD_RESPONSE, f"The model server's response exceeds {limit} bytes.")
                chunks.append(chunk)
            return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, response_started=True) from None


async def _parsed(request_model: type[RequestModel], body: bytes, budget: InspectionBudget | None) -> RequestModel:
    """The validated request, its texts walked. A large body's validation and walk (10,000 messages: a
    hundred milliseconds, most of it in one call that holds the GIL) run on a thread, after a count of
    its messages against `budget` on the event loop (a plain parse: 6 ms for 10,000 messages, which on a
    thread would cost more: every time the loop wants the GIL back it would wait for the whole call), so
    that a request far beyond the budget is refused before it costs more."""
    if len(body) <= PARSE_ON_LOOP_MAX_BYTES:
        return parse_request(request_model, body)
    if budget is not None:
        budget.check_messages(body)
    return await asyncio.to_thread(_parsed_and_walked, request_model, body)


def _parsed_and_walked(request_model: type[RequestModel], body: bytes) -> RequestModel:
    parsed = parse_request(request_model, body)
    parsed.walk()  # kept on the request: the budget, the audit and the stages read it from there
    return parsed


def _check_complete_response(status: int, payload: bytes) -> dict | None:
    """Upstream 4xx answers are the client's business and pass through; 5xx and non-JSON success
    bodies are the upstream's failure and become coded errors. Returns a success body, parsed."""
    if status >= 500:
        raise GatewayError(UPSTREAM_SERVER_ERROR, f"The model server failed with HTTP {status}.")
    if not 200 <= status < 300:
        return None
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise GatewayError(
            UPSTREAM_BAD_RESPONSE, f"The model server answered HTTP {status} with a body that is not a JSON object."
        )
    return parsed


class Probes:
    def __init__(self, upstream: UpstreamClient, metrics: Metrics, breakers: Breakers,
                 audit: AuditWriter | None = None) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.breakers = breakers
        self.audit = audit

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        # Not ready while every upstream's breaker is open (readiness() skips open ones).
        ready, detail = await self.upstream.readiness()
        body = {"status": "ready" if ready else "not ready", "upstream": detail, "breakers": self.breakers.states()}
        if self.audit is not None:
            # Shown, not judged: with `spill` the gateway serves through an audit outage, and a
            # fail-closed policy answers WG5002 itself.
            body["audit"] = self.audit.describe()
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def build_routes(
    proxy: OpenAIProxy, probes: Probes, authenticator: Authenticator, admission: AdmissionControl,
    rate_limiter: RateLimiter | None = None,
) -> list[Route]:
    admin_policy = AdminPolicyEndpoint(proxy.policies, authenticator)
    admin_audit = AdminAuditEndpoint(proxy.settings, authenticator)
    def endpoint(request_model: type[RequestModel] | None) -> ProxyEndpoint:
        return ProxyEndpoint(proxy, request_model, authenticator, admission, rate_limiter)

    return [
        Route("/v1/chat/completions", endpoint(ChatCompletionRequest), methods=["POST"]),
        Route("/v1/completions", endpoint(CompletionRequest), methods=["POST"]),
        Route("/v1/embeddings", endpoint(EmbeddingRequest), methods=["POST"]),
        Route("/v1/models", endpoint(None), methods=["GET"]),
        # Probes and metrics are for the orchestrator: never behind a key, never queued.
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/metrics", probes.metrics_text, methods=["GET"]),
        Route("/admin/policy", admin_policy.get, methods=["GET"]),
        Route("/admin/audit", admin_audit.get, methods=["GET"]),
        openapi_route(),  # unauthenticated, like the probes (see gateway/openapi.py)
    ]
