"""Applying the active policy to OpenAI requests and responses.

Input: every text the model reads in the request (gateway/request_texts.py) goes through the input
stages before anything is forwarded, each alone and, joined, those the model reads together. Block →
WG1001 (or, with `on_block: refusal`, a normal completion carrying the refusal message); redact →
the request is forwarded with the matched spans masked; flag → it passes and the verdict is logged.
Output: the same for the completion's texts, WG1002 on a block.
Streams are checked as they arrive and the most recent text is held back until it has been checked
with what follows (see `StreamChecker`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import replace
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.types import Scope

from gateway.audit_trail import note_stream
from gateway.errors import (
    NON_TEXT_CONTENT,
    POLICY_BLOCKED_INPUT,
    POLICY_BLOCKED_OUTPUT,
    UNKNOWN_CONTENT,
    GatewayError,
)
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, completion_texts, stream_event_text
from gateway.pipeline import Context, Pipeline
from gateway.request_texts import InspectionBudget, Location, RequestTexts, format_location
from gateway.streaming import RawResponse
from gateway.verdict import ALLOW, Verdict, stronger, strongest
from policies.schema import Direction, policy_digest

# A streamed completion is re-checked on its last characters only: enough for any term split
# across events, without rescanning the whole answer at every event.
STREAM_CHECK_TAIL_CHARS = 2048
# Expensive stages read the new text with this much before it: context, without re-reading the answer.
STREAM_EXPENSIVE_CONTEXT_CHARS = 512
# An audit record names this many of a request's uninspected parts (and counts them all).
MAX_AUDITED_PATHS = 16


class Enforcer:
    def __init__(self, pipeline: Pipeline) -> None:
        self.policy = pipeline.policy
        self.pipeline = pipeline
        self.digest = policy_digest(pipeline.policy)
        deployed = pipeline.deployed_classifier
        self.classifier_digest = deployed.digest if deployed is not None else None
        # What a rollout tells apart: the policy's bytes and the activated classifier it uses.
        self.version_key = self.digest if deployed is None else f"{self.digest}+{deployed.digest[:16]}"

    async def verdicts(self, texts: list[str], scope: Scope, direction: Direction) -> list[Verdict]:
        state = scope["state"]
        ctx = Context(direction, state.get("tenant"), scope["path"], state.get("request_id", ""))
        return await self.pipeline.inspect_each(texts, ctx, timings=_stage_timings(state, direction))

    def record(self, scope: Scope, direction: Direction, verdict: Verdict) -> None:
        """Keep the direction's strongest verdict so far for the audit record, and (when it is not
        an allow) for the access log line."""
        state = scope["state"]
        verdicts = state.setdefault("verdicts", {})
        kept = verdicts[direction] = stronger(verdicts.get(direction, ALLOW), verdict)
        if kept.action != "allow":
            state[f"{direction}_verdict"] = {"action": kept.action, "rule_id": kept.rule_id,
                                             "category": kept.category, "stage": kept.stage, "score": kept.score}

    async def check_request(self, request: RequestTexts, body: bytes, scope: Scope,
                            budget: InspectionBudget) -> tuple[Verdict, bytes]:
        """The strongest input verdict over every text the model reads, each alone and, joined, those
        it reads together; and the body to forward (unknown content stripped, matched spans masked,
        where the policy says so). Raises the coded error for a request beyond `budget` or with
        content the policy refuses, before any stage runs, and (error mode) for a block."""
        started = time.perf_counter()
        budget.check(request)
        stripped = self._admit_content(request, scope["state"])
        texts = request.texts
        verdicts = await self.verdicts([text.text for text in texts] + request.joined(), scope, "input")
        # Only a text that is one string of the body can be masked in place: a definition read as one
        # text, or the texts joined, can block or flag the request but not redact it.
        verdicts = [verdict if index < len(texts) and texts[index].one_string else _without_redaction(verdict)
                    for index, verdict in enumerate(verdicts)]
        verdict = strongest(verdicts)
        self.record(scope, "input", verdict)
        if verdict.action == "block" and self.policy.on_block.mode == "error":
            raise GatewayError(POLICY_BLOCKED_INPUT, rule_id=verdict.rule_id)
        masked = {text.location: found.replacement for text, found in zip(texts, verdicts, strict=False)
                  if found.action == "redact" and found.replacement is not None}
        if verdict.action != "block" and (masked or stripped):
            body = orjson.dumps(_rewritten(orjson.loads(body), masked, stripped))
        scope["state"]["inspect_input_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return verdict, body

    def _admit_content(self, request: RequestTexts, state: dict) -> list[Location]:
        """The policy's decision on the content no stage can read, noted for the audit record; raises
        the coded error where the policy refuses it. Returns the unknown content to strip."""
        policy = self.policy
        decisions = {kind: {"action": action, "count": len(locations),
                            "paths": [format_location(location) for location in locations[:MAX_AUDITED_PATHS]]}
                     for kind, locations, action in (("unknown", request.unknown, policy.unknown_content),
                                                     ("non_text", request.non_text, policy.non_text_content))
                     if locations}
        if decisions:
            state["content"] = decisions
        if request.unknown and policy.unknown_content == "reject":
            raise GatewayError(UNKNOWN_CONTENT, f"A content part type or key the OpenAI schema does not have, at "
                               f"{_where(request.unknown)}: the gateway does not forward what it cannot inspect.",
                               param=format_location(request.unknown[0]))
        if request.non_text and policy.non_text_content == "reject":
            raise GatewayError(NON_TEXT_CONTENT, f"Content the gateway cannot inspect (an image, audio, a file or "
                               f"token ids), at {_where(request.non_text)}: this policy refuses it.",
                               param=format_location(request.non_text[0]))
        return request.unknown if policy.unknown_content == "strip" else []

    async def check_completion(self, document: dict, payload: bytes, scope: Scope) -> tuple[Verdict, bytes]:
        """The strongest output verdict over a non-streamed completion (`payload`, parsed as
        `document`), and the payload to return."""
        texts = [text for text in completion_texts(document) if text]
        if not texts:
            return ALLOW, payload
        return await self._check(texts, payload, document, scope, "output")

    async def _check(
        self, texts: list[str], raw: bytes, document: object | None, scope: Scope, direction: Direction
    ) -> tuple[Verdict, bytes]:
        """Inspect `texts`; raise the coded error on a block (error mode), or return the verdict and
        `raw` — re-serialised with the matched spans masked when the verdict is redact."""
        verdicts = await self.verdicts(texts, scope, direction)
        verdict = strongest(verdicts)
        self.record(scope, direction, verdict)
        if verdict.action == "block" and self.policy.on_block.mode == "error":
            kind = POLICY_BLOCKED_INPUT if direction == "input" else POLICY_BLOCKED_OUTPUT
            raise GatewayError(kind, rule_id=verdict.rule_id)
        if verdict.action == "redact":
            replacements = {text: found.replacement for text, found in zip(texts, verdicts, strict=True)
                            if found.action == "redact" and found.replacement is not None}
            parsed = orjson.loads(raw) if document is None else document
            raw = orjson.dumps(_replace_strings(parsed, replacements))
        return verdict, raw

    def stream_checker(self, scope: Scope) -> StreamChecker:
        return StreamChecker(self, scope)


class StreamChecker:
    """Checks a streamed completion as it grows and holds back its most recent text.

    The text the checker sees is kept apart from the events the client receives (as in NeMo
    Guardrails' streaming buffer): every batch of events is inspected together with the text before
    it, and events are released only once at least `streaming.holdback_chars` characters of text
    follow them. A term split across events is therefore caught before any part of it is sent. A
    block ends the stream (WG1002 event, then [DONE]) and the held events are dropped; redact and
    flag are recorded (text already released cannot be masked).

    Expensive stages (the classifier) do not run at every event: they run each time
    `holdback_chars` of new text has gathered, and at the end, on that text with some context
    before it, and an event is released only once they have covered it too. The delay a stream sees
    is then at most about twice the window."""

    def __init__(self, enforcer: Enforcer, scope: Scope) -> None:
        self.enforcer = enforcer
        self.scope = scope
        self.holdback_chars = enforcer.policy.streaming.holdback_chars
        state = scope["state"]
        self.ctx = Context("output", state.get("tenant"), scope["path"], state.get("request_id", ""))
        self.has_expensive = enforcer.pipeline.has_expensive(self.ctx)
        self.tail = ""  # the last STREAM_CHECK_TAIL_CHARS characters of text already checked
        self.total_chars = 0
        self.expensive_checked_chars = 0  # how far the expensive stages have read
        self.held: deque[tuple[bytes, int]] = deque()  # events not yet released, with their text's end offset

    async def admit(self, events: list[bytes]) -> list[bytes]:
        """Inspect the text `events` add (raises GatewayError on a block); the events to send now."""
        finished = False
        added = []
        for event in events:
            text, is_done = stream_event_text(event)
            finished = finished or is_done
            added.append(text)
            self.total_chars += len(text)
            self.held.append((event, self.total_chars))
        new_text = "".join(added)
        note_stream(self.scope["state"], new_text, events)
        if new_text:
            window = self.tail + new_text
            await self._check(window, "cheap")
            self.tail = window[-STREAM_CHECK_TAIL_CHARS:]
        if finished:
            return await self.release_all()
        if self.has_expensive and self.total_chars - self.expensive_checked_chars >= max(1, self.holdback_chars):
            await self._check_expensive()
        covered = self.expensive_checked_chars if self.has_expensive else self.total_chars
        released = []
        while self.held and self.held[0][1] <= covered and self.total_chars - self.held[0][1] >= self.holdback_chars:
            released.append(self.held.popleft()[0])
        return released

    async def release_all(self) -> list[bytes]:
        """Every held event, once all stages have read them: the stream is over."""
        if self.has_expensive and self.expensive_checked_chars < self.total_chars:
            await self._check_expensive()
        released = [event for event, _ in self.held]
        self.held.clear()
        return released

    async def _check_expensive(self) -> None:
        unread = self.total_chars - self.expensive_checked_chars
        await self._check(self.tail[-(unread + STREAM_EXPENSIVE_CONTEXT_CHARS):], "expensive")
        self.expensive_checked_chars = self.total_chars

    async def _check(self, text: str, stages: str) -> None:
        [verdict] = await self.enforcer.pipeline.inspect_each(
            [text], self.ctx, stages, timings=_stage_timings(self.scope["state"], "output"))
        self.enforcer.record(self.scope, "output", verdict)
        if verdict.action == "block":
            raise GatewayError(POLICY_BLOCKED_OUTPUT, rule_id=verdict.rule_id)


def _stage_timings(state: dict, direction: Direction) -> dict[str, float]:
    """Milliseconds per stage for this request and direction, added up over its checks (for the audit)."""
    return state.setdefault("stage_ms", {}).setdefault(direction, {})


def _where(locations: list[Location]) -> str:
    more = f" (and {len(locations) - 1} more)" if len(locations) > 1 else ""
    return f"`{format_location(locations[0])}`{more}"


def _without_redaction(verdict: Verdict) -> Verdict:
    return replace(verdict, action="flag", replacement=None) if verdict.action == "redact" else verdict


def _rewritten(document: object, masked: dict[Location, str], stripped: list[Location]) -> object:
    """The parsed request with the texts at `masked` replaced and the content at `stripped` removed."""
    for location, text in masked.items():
        parent, key = _container(document, location)
        parent[key] = text
    for location in sorted(stripped, reverse=True):  # later list items first: the earlier indexes stay valid
        parent, key = _container(document, location)
        del parent[key]
    return document


def _container(document: object, location: Location) -> tuple[Any, str | int]:
    for key in location[:-1]:
        document = document[key]
    return document, location[-1]


def _replace_strings(value: object, replacements: dict[str, str]) -> object:
    """`value` (parsed JSON) with every string found in `replacements` replaced."""
    if isinstance(value, str):
        return replacements.get(value, value)
    if isinstance(value, list):
        return [_replace_strings(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: _replace_strings(item, replacements) for key, item in value.items()}
    return value


def refusal_response(parsed: BaseModel, message: str) -> RawResponse:
    """A blocked request answered as a normal completion carrying the refusal (`on_block: refusal`)."""
    model = getattr(parsed, "model", "")
    created = int(time.time())
    completion_id = f"chatcmpl-refused-{os.urandom(8).hex()}"
    if isinstance(parsed, ChatCompletionRequest):
        if parsed.stream:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": message},
                                  "finish_reason": "content_filter"}]}
            body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
            return RawResponse(200, [(b"content-type", b"text/event-stream")], body)
        document = {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": message},
                                 "finish_reason": "content_filter"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    elif isinstance(parsed, CompletionRequest) and not parsed.stream:
        document = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": message, "finish_reason": "content_filter"}]}
    else:  # embeddings and streamed text completions have no natural refusal form
        raise GatewayError(POLICY_BLOCKED_INPUT)
    return RawResponse(200, [(b"content-type", b"application/json")], orjson.dumps(document))
