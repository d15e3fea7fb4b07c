"""What one request's path learns of its exchange, for the audit record, the access log and metrics.

The telemetry middleware creates it (with the request id) and keeps it in the ASGI scope's state;
authentication, limits, routes, inspection, the upstream client and the stream relay fill it in;
the audit middleware and telemetry read it once the response is done. One typed record instead of
loose keys: a misspelt field is an error, not a silent miss.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.verdict import Verdict

if TYPE_CHECKING:  # types only: this module sits low and imports neither the policy schema nor the limits
    from gateway.ratelimit import Plan
    from gateway.token_estimate import TokenEstimate
    from policies.schema import AuditSettings

_SCOPE_KEY = "exchange"


@dataclass(slots=True)
class Exchange:
    request_id: str  # the client's X-Request-ID, or one the gateway made
    trace_id: str | None = None
    # Who is asking (gateway/auth.py).
    tenant: str | None = None
    key_id: str | None = None
    role: str | None = None
    subject: str | None = None  # the OpenAI `user` field: the data subject the audit pseudonymises
    # The request and the policy version that judged it (gateway/routes.py).
    model: str | None = None
    input_texts: list[str] | None = None  # what the input stages inspect, and the prompt the audit keeps
    audit_settings: AuditSettings | None = None
    policy_version: str | None = None
    policy_digest: str | None = None
    classifier_digest: str | None = None
    version_key: str | None = None  # what a rollout tells versions apart by (policy and classifier)
    # Inspection (gateway/enforcement.py): the strongest verdict per direction, and per stage its time.
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    input_verdict: dict[str, Any] | None = None  # for the access line, when the input was not simply allowed
    output_verdict: dict[str, Any] | None = None
    inspect_input_ms: float | None = None
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    content: dict[str, dict[str, Any]] | None = None  # what no stage could read, and the policy's decision on it
    # The upstream (gateway/routes.py, gateway/upstream.py).
    upstream_s: float | None = None
    upstream_status: int | None = None
    upstream_attempts: list[dict[str, Any]] | None = None  # when anything but one plain attempt happened
    # The answer: a whole one's text, or a stream's parts as they passed (gateway/audit_trail.py).
    completion_text: str | None = None
    completion_parts: list[str] = field(default_factory=list)
    completion_chars: int = 0
    tokens: dict[str, int] | None = None  # the upstream's usage
    # Token rate limits (gateway/ratelimit.py): the plan to charge, and a stream's estimate if no usage comes.
    rate_limit_plan: Plan | None = None
    streamed_tokens: TokenEstimate | None = None
    # How it ended.
    error_code: str | None = None
    client_disconnected: bool = False


def begin_exchange(scope: MutableMapping[str, Any], request_id: str) -> Exchange:
    """A new request's record, kept in its scope."""
    exchange = scope.setdefault("state", {})[_SCOPE_KEY] = Exchange(request_id)
    return exchange


def exchange_of(scope: MutableMapping[str, Any]) -> Exchange:
    """The request's record (begun by the telemetry middleware, which every request passes)."""
    return scope["state"][_SCOPE_KEY]
