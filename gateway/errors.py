"""The catalogue of stable error codes a client can see.

Every refusal or failure the gateway returns is one `ErrorKind` from this module: a stable `WGxxxx`
code, an HTTP status, an OpenAI-style error body, and a documented cause and fix. docs/errors.md is
generated from this catalogue (`wardgate errors --markdown`) and a test keeps the two identical.

Code ranges: WG1xxx policy decisions, WG2xxx upstream failures, WG3xxx authentication,
WG4xxx bad requests, WG5xxx capacity, WG6xxx the bundled model server, WG9xxx internal faults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from gateway.exchange import exchange_of


@dataclass(frozen=True, slots=True)
class ErrorKind:
    code: str
    name: str
    status: int
    type: str  # OpenAI-style error type, for SDKs that branch on it
    message: str  # default message; a raise site may give a more precise one
    cause: str
    fix: str

    def body(self, request_id: str, message: str | None = None, **extra: str) -> bytes:
        error = {
            "code": self.code,
            "name": self.name,
            "type": self.type,
            "message": message or self.message,
            "request_id": request_id,
        }
        error.update(extra)
        return json.dumps({"error": error}, ensure_ascii=False).encode()


CATALOGUE: dict[str, ErrorKind] = {}


def _register(kind: ErrorKind) -> ErrorKind:
    if kind.code in CATALOGUE:
        raise ValueError(f"duplicate error code {kind.code}")
    CATALOGUE[kind.code] = kind
    return kind


POLICY_BLOCKED_INPUT = _register(ErrorKind(
    "WG1001", "policy_blocked_input", 400, "policy_violation",
    "The request was blocked by the content policy.",
    "A rule of the active policy's input stages matched the prompt; `rule_id` names it. Nothing was "
    "sent to the model. A stage that gave no usable answer, where its `on_failure` is `block`, blocks "
    "with a stable rule id: `moderation.unavailable`; `guard_model.unavailable` (the guard model did not "
    "answer in time, failed, or its circuit breaker is open) or `guard_model.bad_answer` (it answered in "
    "none of its family's formats).",
    "Rephrase the request. Operators: `wardgate policy test` shows what the rule matches; adjust the "
    "policy file (allow-list exceptions, per-tenant overrides) if the block is wrong. For "
    "`guard_model.*` and `moderation.unavailable`: check the service (its breaker is on `/metrics`, the "
    "reason in the audit record's note).",
))
POLICY_BLOCKED_OUTPUT = _register(ErrorKind(
    "WG1002", "policy_blocked_output", 400, "policy_violation",
    "The model's answer was blocked by the content policy.",
    "A rule of the active policy's output stages matched the completion; `rule_id` names it. In a "
    "stream this arrives as a final SSE error event followed by `data: [DONE]`. A stage that failed "
    "closed has the rule ids of WG1001.",
    "Rephrase the request. Operators: see `wardgate policy test` and the policy file's output stages; "
    "for `guard_model.*` and `moderation.unavailable`, the service's health, its breaker on `/metrics`, "
    "and the audit record's note.",
))

UPSTREAM_UNREACHABLE = _register(ErrorKind(
    "WG2001", "upstream_unreachable", 502, "upstream_error",
    "The model server could not be reached.",
    "Connecting to the upstream model server failed: connection refused, DNS failure, or the connect "
    "timeout expired.",
    "Check that the model server runs and that `--upstream` points at it; `GET /readyz` shows "
    "whether the gateway can reach it.",
))
UPSTREAM_TIMEOUT = _register(ErrorKind(
    "WG2002", "upstream_timeout", 504, "upstream_error",
    "The model server did not answer in time.",
    "The upstream accepted the connection but sent nothing for longer than the read timeout, or the "
    "whole exchange took longer than the total timeout.",
    "Retry later; if the model is just slow, raise `read_timeout_s` / `total_timeout_s`.",
))
UPSTREAM_CIRCUIT_OPEN = _register(ErrorKind(
    "WG2003", "upstream_circuit_open", 503, "upstream_error",
    "The model server is failing; the gateway is not sending it requests for now. Retry after the time in "
    "the Retry-After header.",
    "The circuit breaker of the upstream (and of every fallback upstream) is open: `breaker_fail_max` "
    "consecutive attempts failed (connection refused, timeout, HTTP 502/503/504). Nothing was sent upstream. "
    "After `breaker_reset_timeout_s` one trial request goes through; its success closes the breaker.",
    "Retry after the Retry-After delay. Operators: `GET /readyz` and `wardgate_breaker_state` show the open "
    "breaker; fix the model server or configure `--fallback-upstream`.",
))
UPSTREAM_SERVER_ERROR = _register(ErrorKind(
    "WG2004", "upstream_server_error", 502, "upstream_error",
    "The model server failed with a server error.",
    "The upstream answered with an HTTP 5xx status.",
    "Look at the model server's logs; the upstream status is named in the message.",
))
UPSTREAM_BAD_RESPONSE = _register(ErrorKind(
    "WG2005", "upstream_bad_response", 502, "upstream_error",
    "The model server sent a response that is not valid OpenAI wire format.",
    "The upstream body was not JSON where JSON was due, an SSE event carried a payload that is not "
    "JSON, or the response was larger than `max_upstream_body_bytes`.",
    "Check that `--upstream` points at an OpenAI-compatible server (not, say, a web UI or a proxy "
    "error page).",
))
UPSTREAM_INTERRUPTED = _register(ErrorKind(
    "WG2006", "upstream_interrupted", 502, "upstream_error",
    "The model server's response broke off before it finished.",
    "The upstream closed the connection in the middle of its response body. In a stream (after the "
    "200 status has gone out) the client receives this, like any mid-stream failure, as a final SSE "
    "error event followed by `data: [DONE]`.",
    "Retry the request; look at the model server's logs for a crash or restart.",
))

MISSING_API_KEY = _register(ErrorKind(
    "WG3001", "missing_api_key", 401, "authentication_error",
    "This gateway needs an API key: send `Authorization: Bearer <key>`.",
    "API keys are configured and the request carried no `Authorization: Bearer` header.",
    "Send the key your operator issued in an `Authorization: Bearer` header.",
))
INVALID_API_KEY = _register(ErrorKind(
    "WG3002", "invalid_api_key", 401, "authentication_error",
    "The API key is not valid.",
    "The bearer token matches no configured key (keys are compared by their SHA-256).",
    "Check the key; operators add keys with `wardgate keys hash` and the `api_keys` setting.",
))

ADMIN_UNAUTHORIZED = _register(ErrorKind(
    "WG3003", "admin_unauthorized", 401, "authentication_error",
    "This admin endpoint needs an admin credential: send `Authorization: Bearer <key>`.",
    "An admin endpoint was called without a valid admin credential: the gateway's `/admin/policy` or `/admin/audit` "
    "without a key, with an unknown key, or on a gateway where no key has `role: admin` (admin "
    "endpoints are closed until one is configured); the model server's `POST /admin/model` without "
    "its admin token or with a wrong one.",
    "Gateway: configure a key with `role: admin` in `api_keys` and send it. Model server: send the "
    "token configured with `--admin-token` / `WARDGATE_MODEL_SERVER_ADMIN_TOKEN`.",
))
ADMIN_FORBIDDEN = _register(ErrorKind(
    "WG3004", "admin_forbidden", 403, "permission_error",
    "This API key may not use admin endpoints.",
    "The key is valid but its `role` is `user`; admin endpoints need a key with `role: admin`.",
    "Use an admin key, or give this key `role: admin` in the `api_keys` setting.",
))

INVALID_JSON = _register(ErrorKind(
    "WG4001", "invalid_json", 400, "invalid_request_error",
    "The request body is not valid JSON.",
    "The body could not be parsed as JSON (the message gives line and column).",
    "Send a JSON object as the body, with `Content-Type: application/json`.",
))
INVALID_UTF8 = _register(ErrorKind(
    "WG4002", "invalid_utf8", 400, "invalid_request_error",
    "The request body is not valid UTF-8.",
    "JSON must be UTF-8 encoded; the body contained a byte sequence that is not UTF-8.",
    "Encode the body as UTF-8.",
))
INVALID_REQUEST = _register(ErrorKind(
    "WG4003", "invalid_request", 400, "invalid_request_error",
    "The request does not match the OpenAI API schema.",
    "A field is missing or has the wrong type; `param` names the field.",
    "Fix the field named in `param`; see the OpenAI API reference for the route.",
))
BODY_TOO_LARGE = _register(ErrorKind(
    "WG4004", "body_too_large", 413, "invalid_request_error",
    "The request body is larger than this gateway accepts.",
    "The body exceeded `max_body_bytes` (default 1 MiB). The gateway stops reading at the limit; "
    "nothing is forwarded.",
    "Send a smaller request, or raise `max_body_bytes` if such bodies are legitimate.",
))
NOT_FOUND = _register(ErrorKind(
    "WG4005", "not_found", 404, "invalid_request_error",
    "There is no such route on this gateway.",
    "The path is not one of the routes wardgate serves; unknown paths are denied, not forwarded.",
    "Use /v1/chat/completions, /v1/completions, /v1/embeddings or /v1/models.",
))
METHOD_NOT_ALLOWED = _register(ErrorKind(
    "WG4006", "method_not_allowed", 405, "invalid_request_error",
    "This route does not accept that HTTP method.",
    "For example a GET on /v1/chat/completions, which only accepts POST.",
    "Use the method the OpenAI API documents for the route.",
))
BODY_TIMEOUT = _register(ErrorKind(
    "WG4007", "body_timeout", 408, "invalid_request_error",
    "The request body did not arrive in time; the connection is closed.",
    "The client sent the request's headers but not its whole body within `body_timeout_s` (default 10 s). "
    "Bodies are read before a request takes a concurrency slot, so a slow upload holds no slot; the "
    "gateway then gives up on it rather than keep the connection open.",
    "Send the body at once after the headers. Operators: raise `body_timeout_s` if clients on slow links "
    "send large prompts.",
))
HEADERS_TOO_LARGE = _register(ErrorKind(
    "WG4008", "headers_too_large", 431, "invalid_request_error",
    "The request line and headers are larger than this gateway accepts; the connection is closed.",
    "The request line and headers together exceeded `max_header_bytes` (default 64 KiB) before they ended. "
    "(A client that sends its headers slower than `header_timeout_s` is disconnected without an answer: "
    "there is no request yet to answer.)",
    "Send fewer or smaller headers (a large cookie or token is the usual cause), or raise `max_header_bytes`.",
))

UNKNOWN_CONTENT = _register(ErrorKind(
    "WG4010", "unknown_content", 400, "invalid_request_error",
    "The request carries content the gateway does not know, which it will not forward uninspected.",
    "A message content part has a type the OpenAI schema does not define, or a key its type does not have "
    "(`param` names it). The gateway cannot tell what the model would read there, and the active policy says "
    "`unknown_content: reject` (the default). Nothing was sent to the model.",
    "Send content parts as the OpenAI API documents them (text, image_url, input_audio, file, refusal). "
    "Operators: `unknown_content: strip` in the policy forwards the request without the unknown parts and keys.",
))
NON_TEXT_CONTENT = _register(ErrorKind(
    "WG4011", "non_text_content", 400, "invalid_request_error",
    "The request carries content the gateway cannot inspect (images, audio, files, token ids), which this "
    "policy refuses.",
    "The active policy says `non_text_content: reject`, and the request has an image, audio, file or video "
    "part, or a prompt or input given as token ids (`param` names the first). Nothing was sent to the model.",
    "Send text only. Operators: `non_text_content: allow` forwards such content uninspected (the audit record "
    "lists it).",
))
INSPECTION_BUDGET_EXCEEDED = _register(ErrorKind(
    "WG4012", "inspection_budget_exceeded", 413, "invalid_request_error",
    "The request carries more text than the gateway inspects per request.",
    "The request has more messages (`max_messages`), more separate texts (`max_texts`: message contents, "
    "parts, names, tool definitions and arguments, prompts, inputs) or more characters of text "
    "(`max_inspect_chars`) than the gateway's inspection budget allows; the message names the limit. Nothing "
    "was inspected or sent to the model.",
    "Send a shorter conversation or fewer inputs per request. Operators: raise the limit named in the message "
    "if such requests are legitimate.",
))

OVERLOADED = _register(ErrorKind(
    "WG5001", "overloaded", 429, "rate_limit_error",
    "The gateway is at capacity; retry after the time in the Retry-After header.",
    "All `max_concurrency` request slots are busy and the wait queue (`max_queue`) is full, or a "
    "queued request waited longer than `queue_timeout_s`.",
    "Retry after the Retry-After delay with backoff; operators can raise `max_concurrency` or add "
    "replicas.",
))

AUDIT_UNAVAILABLE = _register(ErrorKind(
    "WG5002", "audit_unavailable", 503, "server_error",
    "The request could not be recorded in the audit log, and the policy forbids answering without a record.",
    "The audit store (SQLite file or PostgreSQL) is down or cannot keep up, and the active policy says "
    "`audit: {on_store_failure: fail_closed}`. Nothing the model said was returned.",
    "Retry later. Operators: check the store (the log line `audit_store_unavailable` names the error) "
    "and `wardgate_audit_queue_depth`; `on_store_failure: spill` keeps serving through a local spill file.",
))
RATE_LIMITED = _register(ErrorKind(
    "WG5003", "rate_limited", 429, "rate_limit_error",
    "Rate limit reached; retry after the time in the Retry-After header.",
    "The API key or its tenant used up its `requests_per_minute` (setting `rate_limits`); the message "
    "names which. The limit refills continuously, one request every 60/N seconds.",
    "Retry after the Retry-After delay (`retry-after-ms` is more precise); `x-ratelimit-remaining-requests` on "
    "every response shows what is left. Operators: raise the limit under `rate_limits`.",
))
TOKEN_RATE_LIMITED = _register(ErrorKind(
    "WG5004", "token_rate_limited", 429, "rate_limit_error",
    "Token rate limit reached; retry after the time in the Retry-After header.",
    "The API key or its tenant used up its `tokens_per_minute` (setting `rate_limits`): the prompt and "
    "completion tokens of its earlier requests, as the model server reported them, leave less than one "
    "token. A request's tokens are charged after its response, so one request may overdraw the budget.",
    "Retry after the Retry-After delay; `x-ratelimit-remaining-tokens` on every response shows what is "
    "left. Operators: raise the limit under `rate_limits`.",
))

MODEL_OVERLOADED = _register(ErrorKind(
    "WG6001", "model_overloaded", 429, "rate_limit_error",
    "The model server's queue is full; retry after the time in the Retry-After header.",
    "The bundled model server refuses work rather than run out of memory: its request queue "
    "(`--max-queue`) or the token budget of queued requests is full.",
    "Retry with backoff; operators can raise `--max-queue` / `--max-batch-tokens` if memory allows, or "
    "add replicas.",
))
PROMPT_TOO_LONG = _register(ErrorKind(
    "WG6002", "prompt_too_long", 400, "invalid_request_error",
    "The prompt and max_tokens do not fit in the model's context.",
    "Prompt tokens plus `max_tokens` exceed the model's maximum context (`max_position_embeddings`).",
    "Shorten the prompt or lower `max_tokens`.",
))
MODEL_SWAP_FAILED = _register(ErrorKind(
    "WG6003", "model_swap_failed", 422, "invalid_request_error",
    "The new model could not be loaded; the previous model keeps serving.",
    "A hot swap (`POST /admin/model` or SIGHUP) named a directory that is not a loadable Hugging Face "
    "causal LM, or the loaded model failed its smoke-test generation.",
    "Fix the directory named in the message and swap again; nothing changed for clients meanwhile.",
))
GENERATION_FAILED = _register(ErrorKind(
    "WG6004", "generation_failed", 500, "server_error",
    "The model failed while generating.",
    "The forward pass raised (for example out of memory on the device); the model server logs the "
    "traceback and keeps serving other requests.",
    "Retry; if it persists, look at the model server's log for the traceback.",
))
EMBEDDINGS_NOT_SERVED = _register(ErrorKind(
    "WG6005", "embeddings_not_served", 404, "invalid_request_error",
    "This model server does not serve embeddings.",
    "The bundled model server generates text with a causal language model; `/v1/embeddings` asks for "
    "vectors, which it does not make. The gateway passed the request on after inspecting it.",
    "Send embedding requests to a model server that serves an embedding model (vLLM, TEI, Ollama), with "
    "the gateway in front of it.",
))
INTERNAL_ERROR = _register(ErrorKind(
    "WG9001", "internal_error", 500, "server_error",
    "The gateway failed unexpectedly; the failure is logged under this request id.",
    "A bug or an unexpected condition inside wardgate. The client never sees the traceback; the log "
    "line with the same request_id has it.",
    "Report it with the request id and the matching log line.",
))


class GatewayError(Exception):
    """Raised anywhere in request handling; rendered by the app as the kind's coded response."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str | None = None,
        *,
        param: str | None = None,
        rule_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or kind.message)
        self.kind = kind
        self.message = message or kind.message
        self.param = param
        self.rule_id = rule_id
        self.headers = headers or {}

    def body(self, request_id: str) -> bytes:
        extra = {"param": self.param} if self.param is not None else {}
        if self.rule_id is not None:
            extra["rule_id"] = self.rule_id
        return self.kind.body(request_id, self.message, **extra)


def render_markdown() -> str:
    """docs/errors.md, generated so that the documentation cannot drift from the code."""
    lines = [
        "# wardgate error codes",
        "",
        "<!-- Generated by `wardgate errors --markdown > docs/errors.md`; do not edit by hand. -->",
        "",
        "Every error body has the OpenAI shape, plus a stable code and the request id:",
        "",
        "```json",
        '{"error": {"code": "WG4001", "name": "invalid_json", "type": "invalid_request_error",',
        ' "message": "...", "request_id": "..."}}',
        "```",
        "",
        "`param` is added when one request field is at fault; `rule_id` when a policy rule decided.",
        "The same request id is in the `X-Request-ID` response header and in the gateway's log line.",
        "",
        "| code | name | HTTP | type |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {k.code} | `{k.name}` | {k.status} | {k.type} |" for k in CATALOGUE.values()]
    for kind in CATALOGUE.values():
        lines += [
            "",
            f"## {kind.code} `{kind.name}`",
            "",
            f"HTTP {kind.status}, type `{kind.type}`. Message: {kind.message}",
            "",
            f"**Cause.** {kind.cause}",
            "",
            f"**Fix.** {kind.fix}",
        ]
    return "\n".join(lines) + "\n"


def error_response(scope: Scope, error: GatewayError) -> Response:
    """The coded response for `error`; records the code for the access log and metrics."""
    exchange = exchange_of(scope)
    exchange.error_code = error.kind.code
    return Response(
        error.body(exchange.request_id),
        status_code=error.kind.status,
        headers=error.headers,
        media_type="application/json",
    )


async def on_gateway_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: a GatewayError raised in a route becomes its coded response."""
    assert isinstance(exc, GatewayError)
    return error_response(request.scope, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: the router's 404 and 405 as coded errors (405 keeps Allow)."""
    assert isinstance(exc, HTTPException)
    kind = METHOD_NOT_ALLOWED if exc.status_code == 405 else NOT_FOUND
    headers = {"Allow": exc.headers["Allow"]} if exc.headers and "Allow" in exc.headers else None
    return error_response(request.scope, GatewayError(kind, headers=headers))
