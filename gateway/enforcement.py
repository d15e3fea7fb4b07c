"""Applying the active policy to OpenAI requests and responses.

Input: every text the model reads in the request (gateway/request_texts.py) goes through the input
stages before anything is forwarded, each alone and, joined, those the model reads together. Block →
WG1001 (or, with `on_block: refusal`, a normal completion carrying the refusal message); redact →
the request is forwarded with the matched spans masked; flag → it passes and the verdict is logged.
Output: the same for the completion's texts, WG1002 on a block.
A completion is judged in the same pieces whether it is streamed or not (`CompletionJudge`), so that
both get the same verdict; a stream's text is held back until every stage has judged it (`StreamChecker`).
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

from filters.blacklist import match_reach
from filters.regex_syntax import match_widths
from gateway.audit_trail import note_stream
from gateway.errors import (
    NON_TEXT_CONTENT,
    POLICY_BLOCKED_INPUT,
    POLICY_BLOCKED_OUTPUT,
    UNKNOWN_CONTENT,
    GatewayError,
)
from gateway.exchange import Exchange, exchange_of
from gateway.holdback import HoldBack, Scan, Window
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, completion_texts, stream_event_text
from gateway.pipeline import Context, Pipeline
from gateway.request_texts import InspectionBudget, Location, RequestTexts, format_location
from gateway.streaming import RawResponse
from gateway.verdict import ALLOW, Verdict, stronger, strongest
from policies.schema import BlacklistStage, Direction, Stage, policy_digest

# A stream's blacklist scan re-reads this much of the text before the new text (or twice the hold-back,
# if more): a match up to this long is found streamed as it is whole.
STREAM_SCAN_CONTEXT_CHARS = 2048
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
        self._scan_reach: dict[int, int | None] = {}  # per output stage list

    async def verdicts(self, texts: list[str], scope: Scope, direction: Direction,
                       background: bool = False) -> list[Verdict]:
        exchange = exchange_of(scope)
        ctx = Context(direction, exchange.tenant, scope["path"], exchange.request_id, background=background)
        return await self.pipeline.inspect_each(texts, ctx, timings=_stage_timings(exchange, direction))

    def record(self, scope: Scope, direction: Direction, verdict: Verdict) -> None:
        """Keep the direction's strongest verdict so far for the audit record, and (when it is not
        an allow) for the access log line."""
        exchange = exchange_of(scope)
        kept = exchange.verdicts[direction] = stronger(exchange.verdicts.get(direction, ALLOW), verdict)
        if kept.action != "allow":
            logged = {"action": kept.action, "rule_id": kept.rule_id, "category": kept.category, "stage": kept.stage,
                      "score": kept.score}
            if direction == "input":
                exchange.input_verdict = logged
            else:
                exchange.output_verdict = logged

    async def check_request(self, request: RequestTexts, body: bytes, scope: Scope,
                            budget: InspectionBudget) -> tuple[Verdict, bytes]:
        """The strongest input verdict over every text the model reads, each alone and, joined, those
        it reads together; and the body to forward (unknown content stripped, matched spans masked,
        where the policy says so). Raises the coded error for a request beyond `budget` or with
        content the policy refuses, before any stage runs, and (error mode) for a block."""
        started = time.perf_counter()
        budget.check(request)
        stripped = self._admit_content(request, exchange_of(scope))
        texts = request.texts
        heavy = budget.is_heavy(request)
        async with budget.turn(heavy):
            verdicts = await self.verdicts([text.text for text in texts] + request.joined(), scope, "input", heavy)
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
        exchange_of(scope).inspect_input_ms = round((time.perf_counter() - started) * 1000, 3)
        return verdict, body

    def _admit_content(self, request: RequestTexts, exchange: Exchange) -> list[Location]:
        """The policy's decision on the content no stage can read, noted for the audit record; raises
        the coded error where the policy refuses it. Returns the unknown content to strip."""
        policy = self.policy
        decisions = {kind: {"action": action, "count": len(locations),
                            "paths": [format_location(location) for location in locations[:MAX_AUDITED_PATHS]]}
                     for kind, locations, action in (("unknown", request.unknown, policy.unknown_content),
                                                     ("non_text", request.non_text, policy.non_text_content))
                     if locations}
        if decisions:
            exchange.content = decisions
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
        `document`), and the payload to return. Each text is judged as it would be streamed."""
        texts = [text for text in completion_texts(document) if text]
        if not texts:
            return ALLOW, payload
        verdicts = []
        for text in texts:  # in turn: the audit keeps the verdicts in the order a client reads them
            judge = CompletionJudge(self, scope)
            judge.add(text)
            await judge.check(finished=True)
            verdicts.append(judge.verdict)
        return self._enforce(texts, verdicts, payload, document, "output")

    def _enforce(self, texts: list[str], verdicts: list[Verdict], raw: bytes, document: object | None,
                 direction: Direction) -> tuple[Verdict, bytes]:
        """The verdict over `texts` (one each in `verdicts`): raise the coded error on a block (error
        mode), or return it and `raw` — re-serialised with the matched spans masked when it is redact."""
        verdict = strongest(verdicts)
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

    def holdback(self, ctx: Context) -> HoldBack:
        """The hold-back for a completion under the output stages that apply to `ctx`."""
        stages = self.policy.stages_for("output", ctx.tenant, ctx.route)
        if id(stages) not in self._scan_reach:
            self._scan_reach[id(stages)] = _scan_reach(stages, self.policy.streaming.holdback_chars)
        streaming = self.policy.streaming
        window = streaming.window_chars if self.pipeline.has_expensive(ctx) else None
        return HoldBack(self._scan_reach[id(stages)], window, streaming.window_overlap_chars,
                        scan_context=STREAM_SCAN_CONTEXT_CHARS)


class CompletionJudge:
    """Judges one completion text in the pieces its hold-back gives, arriving whole or in events.

    The blacklist judges each match once, when the text after it is known; the classifier and the
    moderation hook each window once, when it is complete. What they find is settled in the order of
    the text (where a match or window ends; the blacklist first at the same place), once everything
    that ends before it has been judged too. That order does not depend on how the text was cut into
    events, so a streamed answer and the same answer whole get the same verdict: the first block, or
    else the strongest finding. Each settled finding is recorded for the audit as it settles."""

    def __init__(self, enforcer: Enforcer, scope: Scope) -> None:
        self.enforcer = enforcer
        self.scope = scope
        exchange = exchange_of(scope)
        # A completion is judged with its prompt: a guard model reads them together.
        prompt = "\n\n".join(exchange.input_texts) if exchange.input_texts else None
        self.ctx = Context("output", exchange.tenant, scope["path"], exchange.request_id, prompt=prompt)
        self.holdback = enforcer.holdback(self.ctx)
        self.verdict = ALLOW  # of what has settled
        self.blocked: Verdict | None = None  # the block that settled: the completion is refused
        self._text = ""  # the completion from offset self._text_start on: what checks still read
        self._text_start = 0
        self._found: list[tuple[int, int, Verdict]] = []  # (where it ends, 0 blacklist / 1 window, verdict)
        self._first_block_end: int | None = None  # of the blocks found, not settled yet

    def add(self, text: str) -> None:
        """One event's text (one piece for a whole answer)."""
        self.holdback.add(len(text))
        self._text += text

    async def check(self, finished: bool = False) -> None:
        """Run the checks that are due and settle what they found."""
        if finished:
            self.holdback.finish()
        due = self.holdback.due()
        if due.scan is not None:
            await self._scan(due.scan)
        # A window that ends after a block already found cannot change the outcome.
        windows = [window for window in due.windows
                   if self._first_block_end is None or window.end <= self._first_block_end]
        if windows:
            await self._score(windows)
        self._settle()
        self._forget_judged_text()

    def releasable_events(self) -> int:
        """How many held events may go out now: none while a block found is waiting to settle."""
        return 0 if self._first_block_end is not None or self.blocked else self.holdback.release()

    async def _scan(self, scan: Scan) -> None:
        text = self._slice(scan.start, scan.end)
        ctx = replace(self.ctx, ends_in=(scan.after - scan.start, scan.upto - scan.start))
        [verdict] = await self._inspect([text], ctx, "cheap")
        self.holdback.checked(scan)
        if verdict != ALLOW:
            self._note(scan.start + verdict.span[1] if verdict.span is not None else scan.upto, 0, verdict)

    async def _score(self, windows: list[Window]) -> None:
        verdicts = await self._inspect([self._slice(window.start, window.end) for window in windows], self.ctx,
                                       "expensive")
        for window, verdict in zip(windows, verdicts, strict=True):
            self.holdback.checked(window)
            if verdict != ALLOW:
                self._note(window.end, 1, verdict)

    async def _inspect(self, texts: list[str], ctx: Context, stages: str) -> list[Verdict]:
        timings = _stage_timings(exchange_of(self.scope), "output")
        return await self.enforcer.pipeline.inspect_each(texts, ctx, stages, timings=timings)

    def _note(self, end: int, order: int, verdict: Verdict) -> None:
        self._found.append((end, order, verdict))
        if verdict.action == "block" and (self._first_block_end is None or end < self._first_block_end):
            self._first_block_end = end

    def _settle(self) -> None:
        judged = self.holdback.judged()
        ready = sorted((found for found in self._found if found[0] <= judged), key=lambda found: found[:2])
        self._found = [found for found in self._found if found[0] > judged]
        for _, _, verdict in ready:
            self.enforcer.record(self.scope, "output", verdict)
            self.verdict = stronger(self.verdict, verdict)
            if verdict.action == "block":
                self.blocked = verdict
                self._found = []
                return

    def _slice(self, start: int, end: int) -> str:
        return self._text[start - self._text_start:end - self._text_start]

    def _forget_judged_text(self) -> None:
        """Drop text no check will read again (in large steps, so that a long answer is not copied per event)."""
        holdback = self.holdback
        keep_from = holdback.length
        if holdback.reach is not None:
            keep_from = min(keep_from, max(0, holdback.scanned - holdback.scan_context))
        if holdback.window is not None:
            keep_from = min(keep_from, holdback.windows_done * holdback.step)
        if keep_from - self._text_start > STREAM_SCAN_CONTEXT_CHARS:
            self._text = self._text[keep_from - self._text_start:]
            self._text_start = keep_from


class StreamChecker:
    """Checks a streamed completion as it grows and holds back the events no stage has cleared yet.

    The text the checker sees is kept apart from the events the client receives (as in NeMo
    Guardrails' streaming buffer). An event is released only once every stage has judged all of its
    text and nothing judged later can block any of it (see gateway/holdback.py): at least
    `streaming.holdback_chars` (or the blacklist's longest match) of judged text follow it, and the
    classifier's and hook's windows that hold it have been scored. A block ends the stream (WG1002
    event, then [DONE]) and the held events are dropped; redact and flag are recorded (the streamed
    text is not masked). The delay a stream sees is about the longer of the hold-back and one window."""

    def __init__(self, enforcer: Enforcer, scope: Scope) -> None:
        self.scope = scope
        self.judge = CompletionJudge(enforcer, scope)
        self.held: deque[bytes] = deque()

    async def admit(self, events: list[bytes]) -> list[bytes]:
        """Inspect the text `events` add (raises GatewayError on a block); the events to send now."""
        finished = False
        added = []
        for event in events:
            text, is_done = stream_event_text(event)
            finished = finished or is_done
            added.append(text)
            self.judge.add(text)
            self.held.append(event)
        note_stream(exchange_of(self.scope), "".join(added), events)
        if finished:
            return await self.release_all()
        await self._check(finished=False)
        return [self.held.popleft() for _ in range(self.judge.releasable_events())]

    async def release_all(self) -> list[bytes]:
        """Every held event, once all stages have judged them: the stream is over."""
        await self._check(finished=True)
        released = list(self.held)
        self.held.clear()
        return released

    async def _check(self, finished: bool) -> None:
        await self.judge.check(finished)
        if self.judge.blocked is not None:
            raise GatewayError(POLICY_BLOCKED_OUTPUT, rule_id=self.judge.blocked.rule_id)


def _scan_reach(stages: list[Stage], holdback_chars: int) -> int | None:
    """How long a blacklist match the hold-back keeps from the client until it is judged:
    `holdback_chars`, or the longest literal or bounded regex reach of a blocking rule if longer (a
    flag lets the text through anyway, and streamed text is not masked); None when no blacklist runs."""
    blacklists = [stage for stage in stages if isinstance(stage, BlacklistStage)]
    if not blacklists:
        return None
    reaches = [holdback_chars]
    for rule in (rule for stage in blacklists for rule in stage.rules if rule.action == "block"):
        reaches += map(len, rule.literals)
        reaches += [reach for reach in map(_match_length, rule.regexes) if reach is not None]
    return max(reaches)


def _match_length(pattern: str) -> int | None:
    """The most characters of (normalised) text a match of `pattern` covers, plus the one after it that
    a word boundary reads; None where the blacklist finds it unbounded or seeing past its match. The
    blacklist's reach allows three text characters per pattern character (full case folding: "ß"
    matches "ss"); a pattern whose characters each fold to one character matches at most one for each."""
    reach = match_reach(pattern)
    if reach is None or any(len(char.casefold()) > 1 for char in pattern):
        return reach
    return match_widths(pattern)[1] + 1


def _stage_timings(exchange: Exchange, direction: Direction) -> dict[str, float]:
    """Milliseconds per stage for this request and direction, added up over its checks (for the audit)."""
    return exchange.stage_ms.setdefault(direction, {})


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
