"""The gateway's side of the audit log: what a request leaves behind, and holding its response until
that record is committed.

Every request except the orchestrator's probes leaves exactly one record. The request path notes
what it learns in the request's `Exchange` (`note_*`, gateway/exchange.py); the `RequestAudit` middleware wraps each
request's `send` in an `AuditedSend`, which builds the record when the response is about to
complete, waits for its commit, and only then lets the last message out. If the
record cannot be committed and the policy says fail closed, a response whose status line has not
gone out yet becomes a 503 (WG5002); a stream that already started ends with that error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filters.pii import redact_pii
from gateway.config import Settings
from gateway.errors import AUDIT_UNAVAILABLE, GatewayError
from gateway.exchange import Exchange, exchange_of
from gateway.openai_schema import completion_texts, stream_event_text
from gateway.verdict import Verdict, strongest
from policies.schema import AuditSettings
from privacy.audit.record import AuditRecord, SubjectKey, new_record, retain_text, stored_request_id
from privacy.audit.signing import HmacSigner, Signer, hmac_key_from_file, load_ed25519
from privacy.audit.store import AuditStore, CheckpointPolicy, open_store
from privacy.audit.writer import AuditUnavailable, AuditWriter, WriterSettings
from privacy.files import private_directory
from privacy.redact import retained

log = structlog.get_logger("wardgate.audit")

# The orchestrator's probes are not requests anybody needs to account for.
UNAUDITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Longer prompts and completions are stored cut to this many characters (the digest covers what is stored).
MAX_STORED_CHARS = 65536
DEFAULT_AUDIT = AuditSettings()


def audit_store(settings: Settings) -> AuditStore:
    return open_store(settings.audit_dsn or str(settings.audit_path))


def audit_signer(settings: Settings, create: bool = True) -> Signer:
    """Ed25519 with `audit_signing_key`, else HMAC with `audit_hmac_key`, else HMAC with a key kept
    in the state directory (created on first use, so that checkpoints are always signed)."""
    if settings.audit_signing_key is not None:
        return load_ed25519(settings.audit_signing_key)
    if settings.audit_hmac_key:
        return HmacSigner(settings.audit_hmac_key.encode())
    return HmacSigner(hmac_key_from_file(settings.audit_hmac_key_path, create=create))


def audit_subject_key(settings: Settings, create: bool = True) -> SubjectKey:
    """The key records pseudonymise their data subject with, kept in the state directory (created on
    first use). Replicas that share one audit store must share this file, or erasure misses the
    subjects the others recorded."""
    return SubjectKey(hmac_key_from_file(settings.state_dir / "audit-subject.key", create, "audit subject key"))


def checkpoint_policy(settings: Settings) -> CheckpointPolicy:
    return CheckpointPolicy(settings.audit_checkpoint_every, settings.audit_checkpoint_interval_s)


def append_admin_event(settings: Settings, event: str, **fields: object) -> None:
    """Chain an admin event (a rollback, an activation, a DP training run) into the audit log from
    outside a running gateway: straight into the store, there being no writer to queue it for.
    Raises StoreError or SigningError; the gateway's own events go through its writer
    (gateway/policy_reload.py)."""
    if not settings.audit_enabled:
        return
    store = audit_store(settings)
    try:
        store.migrate()
        store.append([new_record("event", event=event, **fields)], audit_signer(settings), checkpoint_policy(settings))
    finally:
        store.close()


def build_writer(settings: Settings, observer: Any = None) -> AuditWriter:
    writer_settings = WriterSettings(
        queue_size=settings.audit_queue_size,
        batch_max=settings.audit_batch_max,
        checkpoints=checkpoint_policy(settings),
        commit_timeout_s=settings.audit_commit_timeout_s,
        breaker_fail_max=settings.audit_breaker_fail_max,
        breaker_reset_s=settings.audit_breaker_reset_s,
    )
    private_directory(settings.state_dir)  # before anything is written in it
    return AuditWriter(audit_store(settings), audit_signer(settings), settings.state_dir / "audit-spill",
                       writer_settings, observer, audit_subject_key(settings))


# -- what the request path notes down ---------------------------------------------------------------

def note_request(exchange: Exchange, parsed: Any) -> None:
    exchange.model = getattr(parsed, "model", None)
    exchange.input_texts = parsed.texts()
    user = (parsed.model_extra or {}).get("user")
    if isinstance(user, str) and user:
        exchange.subject = user


def note_completion(exchange: Exchange, document: dict) -> None:
    exchange.completion_text = "\n\n".join(text for text in completion_texts(document) if text)
    note_usage(exchange, document)


def note_usage(exchange: Exchange, document: dict) -> None:
    usage = document.get("usage")
    if isinstance(usage, dict):
        exchange.tokens = {name: usage[key] for name, key in (("prompt", "prompt_tokens"),
                                                             ("completion", "completion_tokens"))
                           if isinstance(usage.get(key), int)}


def note_stream(exchange: Exchange, text: str | None, events: list[bytes]) -> None:
    """A streamed completion's text as it passes, and its usage if the upstream reports it. `text`: what
    the events add, as output inspection read it; None where nothing inspects the output, and the
    events are read here (the audit keeps a stream's text as it keeps a whole answer's)."""
    if text is None:
        text = "".join(stream_event_text(event)[0] for event in events)
    estimate = exchange.streamed_tokens  # present when a token rate limit applies
    if estimate is not None:  # in case no usage comes
        estimate.add(text)
    if text and exchange.completion_chars < MAX_STORED_CHARS:
        exchange.completion_parts.append(text)
        exchange.completion_chars += len(text)
    for event in events:
        if b'"usage"' in event:
            for line in event.splitlines():
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    try:
                        document = orjson.loads(line[5:])
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(document, dict):
                        note_usage(exchange, document)


# -- the record -------------------------------------------------------------------------------------

# A verdict's guard model escalations kept in full (a long stream can have one per window).
MAX_AUDITED_ESCALATIONS = 16

def _verdict_fields(verdict: Verdict) -> dict[str, Any]:
    fields = {"action": verdict.action, "stage": verdict.stage, "rule_id": verdict.rule_id,
              "category": verdict.category, "score": verdict.score, "view": verdict.view}
    if verdict.scores:
        fields["scores"] = verdict.scores
    if verdict.bypass is not None:
        fields["note"] = verdict.bypass.note
    if verdict.escalations:  # what a guard model was asked and answered; a long stream's first ones, and a count
        fields["escalations"] = [escalation.fields() for escalation in verdict.escalations[:MAX_AUDITED_ESCALATIONS]]
        fields["escalation_count"] = len(verdict.escalations)
    return {name: value for name, value in fields.items() if value is not None}


def _decision(verdicts: dict[str, Verdict], status: int, error_code: str | None) -> tuple[str, Verdict | None]:
    """The request's overall decision and the verdict that made it."""
    deciding = strongest(list(verdicts.values())) if verdicts else None
    if deciding is not None and deciding.action != "allow":
        return deciding.action, deciding
    if error_code or status >= 400:
        return "error", None
    return "allow", deciding


def _upstream_fields(exchange: Exchange) -> dict[str, Any] | None:
    """The upstream's status and latency, and every attempt when there was more than one plain one."""
    if exchange.upstream_s is None:
        return None
    fields = {"status": exchange.upstream_status, "ms": round(exchange.upstream_s * 1000, 3)}
    if exchange.upstream_attempts:
        fields["attempts"] = exchange.upstream_attempts
    return fields


def request_record(scope: Scope, status: int, elapsed_s: float, known_route: bool,
                   subject_key: SubjectKey | None) -> AuditRecord:
    exchange = exchange_of(scope)
    verdicts = exchange.verdicts
    error_code = exchange.error_code
    decision, deciding = _decision(verdicts, status, error_code)
    admin = scope["path"].startswith("/admin/")
    record = new_record(
        "event" if admin else "request",
        request_id=stored_request_id(exchange.request_id),
        event="admin_access" if admin else None,
        tenant=exchange.tenant,
        key_id=exchange.key_id,
        route=scope["path"] if known_route else "unmatched",
        method=scope["method"],
        status=status,
        model=redact_pii(exchange.model) if isinstance(exchange.model, str) else None,
        policy_version=exchange.policy_version,
        policy_digest=exchange.policy_digest,
        classifier_digest=exchange.classifier_digest,
        decision=decision,
        category=deciding.category if deciding is not None else None,
        rule_id=deciding.rule_id if deciding is not None else None,
        score=deciding.score if deciding is not None else None,
        verdicts={direction: _verdict_fields(verdict) for direction, verdict in verdicts.items()} or None,
        stage_ms=exchange.stage_ms or None,
        upstream=_upstream_fields(exchange),
        tokens=exchange.tokens,
        error_code=error_code,
        latency_ms=round(elapsed_s * 1000, 3),
        client_disconnected=exchange.client_disconnected or None,
        content=exchange.content,  # what no stage could read, and the policy's decision on it
    )
    audit = exchange.audit_settings if exchange.audit_settings is not None else DEFAULT_AUDIT
    record.on_store_failure = audit.on_store_failure
    completion = exchange.completion_text
    if completion is None and exchange.completion_parts:
        completion = "".join(exchange.completion_parts)
    truncated = []
    prompt = "\n\n".join(exchange.input_texts) if exchange.input_texts is not None else None
    subject = exchange.subject
    pseudonym = subject_key.pseudonym(subject) if subject is not None and subject_key is not None else None
    for role, text in (("prompt", prompt), ("completion", completion)):
        if not text:
            continue
        if len(text) > MAX_STORED_CHARS:
            truncated.append(role)
        kept = retained(text[:MAX_STORED_CHARS], audit.retention)
        record.texts.append(retain_text(role, text, kept, pseudonym, audit.retention_days))
    record.body["retention"] = audit.retention
    if truncated:
        record.body["truncated"] = truncated
    return record


# Records whose texts are longer than this are built (digests, personal data masked) on a thread.
RECORD_OFF_LOOP_CHARS = 8192


def _text_chars(exchange: Exchange) -> int:
    """How much text a request's record keeps (counted up to the point that matters)."""
    chars = exchange.completion_chars if exchange.completion_text is None else len(exchange.completion_text)
    for text in exchange.input_texts or ():
        chars += len(text)
        if chars > RECORD_OFF_LOOP_CHARS:
            break
    return chars


class AuditedSend:
    """Wraps a request's `send`: the status line is held back, and the last message goes out only
    once the request's record is committed."""

    def __init__(self, writer: AuditWriter, scope: Scope, send: Send, started: float, known_route: bool) -> None:
        self.writer = writer
        self.scope = scope
        self.send = send
        self.started = started
        self.known_route = known_route
        self.held_start: Message | None = None
        self.status = 0
        self.sent_status = 0  # the status line the client got, once it went out
        self.recorded = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.held_start = message
            return
        final = message["type"] == "http.response.body" and not message.get("more_body", False)
        if final and not await self._commit(self.status):
            await self._send_refusal(message)
            return
        if self.held_start is not None:
            start, self.held_start = self.held_start, None
            self.sent_status = self.status
            await self.send(start)
        await self.send(message)

    async def _commit(self, status: int) -> bool:
        self.recorded = True
        arguments = (self.scope, status, time.perf_counter() - self.started, self.known_route, self.writer.subject_key)
        if _text_chars(exchange_of(self.scope)) > RECORD_OFF_LOOP_CHARS:
            # Masking personal data in long texts takes milliseconds per 10K characters: not on the loop.
            record = await asyncio.to_thread(request_record, *arguments)
        else:
            record = request_record(*arguments)
        try:
            await self.writer.commit(record)
        except AuditUnavailable as exc:
            log.error("audit_record_refused", error=str(exc))  # the request id is bound to every line
            return False
        return True

    async def _send_refusal(self, final: Message) -> None:
        """The record could not be kept and the policy says fail closed: WG5002 instead of the response."""
        exchange = exchange_of(self.scope)
        error = GatewayError(AUDIT_UNAVAILABLE)
        exchange.error_code = error.kind.code
        body = error.body(exchange.request_id)
        if self.held_start is None:  # a stream whose status line went out already: end it with the error
            await self.send({"type": "http.response.body", "more_body": False,
                             "body": final.get("body", b"") + b"data: " + body + b"\n\n"})
            return
        self.held_start = None
        self.status = self.sent_status = error.kind.status
        await self.send({"type": "http.response.start", "status": error.kind.status,
                         "headers": [(b"content-type", b"application/json"),
                                     (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def finish(self) -> None:
        """After the app returned or raised: a request that never completed a response is recorded now,
        with the status the client got, or 500 (it crashed) or 499 (the client left, nginx's convention)
        when none went out. The record is committed even if this task is cancelled."""
        if self.recorded:
            return
        status = self.sent_status or (499 if exchange_of(self.scope).client_disconnected else 500)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._commit(status))


class RequestAudit:
    """ASGI middleware: each request's record, committed before its response completes (`AuditedSend`).

    It sits inside the telemetry middleware: the request id exists before it runs, and a refusal it
    makes (WG5002) goes out with that id and is logged and counted as it was sent.
    """

    def __init__(self, app: ASGIApp, writer: AuditWriter, route_paths: frozenset[str]) -> None:
        self.app = app
        self.writer = writer
        self.route_paths = route_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUDITED_PATHS:
            await self.app(scope, receive, send)
            return
        audited = AuditedSend(self.writer, scope, send, time.perf_counter(), scope["path"] in self.route_paths)
        try:
            await self.app(scope, receive, audited)
        finally:
            await audited.finish()

