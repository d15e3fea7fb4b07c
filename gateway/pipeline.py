"""The inspection pipeline: a policy's stages run on texts and give one verdict.

Every stage implements `async def inspect(text, ctx) -> Verdict` (DESIGN.md). The verdict of a
request is the strongest of its stages' (block > redact > flag > allow), the first stage's on a tie.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from classifiers.deployment import DeployedClassifier
from classifiers.labels import ClassifierError
from filters.blacklist import Blacklist, Match, Rule, RuleError
from filters.guard_model import DEFAULT_SAFEGUARD_POLICY, SHIELDGEMMA_HARM_TYPES, GuardClient, GuardConfig
from filters.moderation_hook import HookConfig, ModerationClient, ModerationConfigError, ModerationUnavailable
from filters.scan_process import scan_process
from gateway.breakers import Breaker, BreakerOpen, Breakers
from gateway.tracing import child_span
from gateway.verdict import ALLOW, SEVERITY, Bypass, Escalation, Verdict, stronger, strongest
from policies.schema import (
    BlacklistStage,
    ClassifierStage,
    Direction,
    GoldenTest,
    GuardModelStage,
    ModerationStage,
    Policy,
    PolicyError,
    Stage,
    load_policy,
)
from policies.yaml_source import line_of, parse_yaml


@dataclass(frozen=True)
class Context:
    direction: Direction
    tenant: str | None = None
    route: str | None = None
    request_id: str = ""
    # Only findings that end in (start, end] of the text count (a stream's check: what ends earlier was
    # judged by an earlier check, what ends later waits for the text that follows it). None: all.
    ends_in: tuple[int, int] | None = None
    # A heavy request's (see InspectionBudget.is_heavy): its stages run at a lower priority where they can.
    background: bool = False
    # For a completion: the prompt it answers (the texts the model read, joined), which a guard model
    # judges it with.
    prompt: str | None = None
    # The verdicts of the stages that ran before on this text, by stage name (for a stage that reads them:
    # a guard model's cascade).
    earlier: Mapping[str, Verdict] | None = None


def _thresholded(scores: dict[str, float], block: dict[str, float], flag: dict[str, float], stage: str) -> Verdict:
    """Block on the label furthest over its block threshold, else flag likewise, else allow (with the scores)."""
    for action, thresholds in (("block", block), ("flag", flag)):
        over = [(scores[label] - threshold, label) for label, threshold in thresholds.items()
                if scores[label] >= threshold]
        if over:
            label = max(over)[1]
            return Verdict(action, label, scores[label], f"{stage}.{label}", stage, scores=scores)
    return Verdict(scores=scores, stage=stage)


class Inspector(Protocol):
    name: str

    async def inspect(self, text: str, ctx: Context) -> Verdict: ...


class ClassifierInspector:
    """The risk classifier stage. Texts of one request are scored concurrently, so that the
    micro-batcher puts them (and other requests') into one batch."""

    name = "classifier"
    expensive = True  # a stream runs it once per hold-back window, not at every event

    def __init__(self, stage: ClassifierStage, model: str) -> None:
        from classifiers.registry import shared_batcher  # torch loads only where a policy uses the classifier

        self.batcher = shared_batcher(model, stage.quantize)
        self.block = stage.block
        self.flag = stage.flag

    async def inspect(self, text: str, ctx: Context) -> Verdict:
        if not text.strip():
            return ALLOW
        # Requests take turns (the batcher is fair); a heavy one's texts wait in the background lane.
        row = await self.batcher.score(text, ctx.request_id, ctx.background)
        scores = {name: round(float(value), 4) for name, value in zip(self.batcher.labels, row, strict=True)}
        return _thresholded(scores, self.block, self.flag, self.name)


class ModerationInspector:
    """The external moderation hook. When it gives no usable answer the stage's `on_failure` decides,
    and the verdict carries the bypass (the audit record and a metric show it)."""

    name = "moderation"
    expensive = True  # a network call: a stream runs it once per hold-back window

    def __init__(self, stage: ModerationStage, breaker: Breaker | None = None) -> None:
        self.breaker = breaker
        cache = stage.cache
        self.client = ModerationClient(HookConfig(
            url=stage.url, format=stage.format, model=stage.model,
            **({"request": stage.request} if stage.request is not None else {}),
            response=dict(stage.response), timeout_s=stage.timeout_s, max_concurrency=stage.max_concurrency,
            cache_max_entries=cache.max_entries if cache is not None else 0,
            cache_ttl_s=cache.ttl_s if cache is not None else 0.0, auth_env=stage.auth_env,
        ))
        self.block = stage.block
        self.flag = stage.flag
        self.on_failure = stage.on_failure

    async def inspect(self, text: str, ctx: Context) -> Verdict:
        if not text.strip():
            return ALLOW
        try:
            async with _service_guard(self.breaker):
                scores = await self.client.moderate(text)
        except (ModerationUnavailable, BreakerOpen) as exc:
            _, reason = _service_failure(exc)
            bypass = Bypass(self.on_failure, reason)
            if self.on_failure == "allow":
                return Verdict(stage=self.name, bypass=bypass)
            return Verdict(self.on_failure, "moderation_unavailable", None, "moderation.unavailable", self.name,
                           bypass=bypass)
        return _thresholded({label: round(score, 4) for label, score in scores.items()}, self.block, self.flag,
                            self.name)


def _service_guard(breaker: Breaker | None) -> contextlib.AbstractAsyncContextManager:
    """A service call under its breaker, if it has one: an open breaker answers at once instead of
    waiting for a sick service."""
    return breaker.guard(failure_types=(ModerationUnavailable,)) if breaker is not None else contextlib.nullcontext()


def _service_failure(exc: ModerationUnavailable | BreakerOpen) -> tuple[str, str]:
    """A failed service call's stable code (unavailable, bad_answer) and its reason in a few words."""
    if isinstance(exc, ModerationUnavailable):
        return exc.code, exc.reason
    return "unavailable", f"circuit breaker open (retry in {exc.retry_after_s:.0f} s)"


class GuardModelInspector:
    """A guard model (filters/guard_model), asked about a text when the cascade says so: an earlier
    stage's score inside a band of `when`, a calibration `sample`, or always. Every escalation and
    the guard's answer ride on the verdict (the audit record and metrics show them); a calibration
    sample's answer is recorded only. No usable answer: `on_failure` decides, as for the moderation hook."""

    name = "guard_model"
    expensive = True  # a network call: a stream asks it once per hold-back window
    reads_earlier = True  # runs after the stages before it, never alongside them: it reads their scores

    def __init__(self, stage: GuardModelStage, breaker: Breaker | None = None) -> None:
        self.stage = stage
        self.breaker = breaker
        self.label = f"guard_model.{stage.family}"
        cache = stage.cache
        self.client = GuardClient(GuardConfig(
            url=stage.url, family=stage.family, model=stage.model, timeout_s=stage.timeout_s,
            max_concurrency=stage.max_concurrency, cache_max_entries=cache.max_entries if cache is not None else 0,
            cache_ttl_s=cache.ttl_s if cache is not None else 0.0, auth_env=stage.auth_env,
            max_tokens=stage.max_tokens, policy=stage.policy or DEFAULT_SAFEGUARD_POLICY,
            harm_types=tuple(stage.harm_types or SHIELDGEMMA_HARM_TYPES), threshold=stage.threshold,
        ))

    def trigger(self, text: str, earlier: Mapping[str, Verdict]) -> tuple[str, float | None] | None:
        """Why the text goes to the guard, and the earlier score behind it; None: it does not."""
        stage = self.stage
        for name, bands in (stage.when or {}).items():
            scores = earlier[name].scores if name in earlier else None
            for label, (low, high) in bands.items():
                score = scores.get(label) if scores else None
                if score is not None and low <= score <= high:
                    return f"band:{name}.{label}", score
        unsafe = next((verdict.scores["unsafe"] for verdict in earlier.values()
                       if verdict.scores and "unsafe" in verdict.scores), None)
        if stage.sample is not None and sampled(text, stage.sample):
            return "sample", unsafe
        if stage.when is None and stage.sample is None:
            return "always", unsafe
        return None

    async def inspect(self, text: str, ctx: Context) -> Verdict:
        if not text.strip():
            return ALLOW
        found = self.trigger(text, ctx.earlier or {})
        if found is None:
            return ALLOW
        trigger, score = found
        enforced = trigger != "sample"
        prompt = None
        if ctx.direction == "output" and ctx.prompt and self.stage.max_prompt_chars:
            prompt = ctx.prompt[-self.stage.max_prompt_chars:]
        started = time.perf_counter()
        try:
            async with _service_guard(self.breaker):
                answer, cached = await self.client.judge(text, prompt)
        except (ModerationUnavailable, BreakerOpen) as exc:
            elapsed = round((time.perf_counter() - started) * 1000, 3)
            code, reason = _service_failure(exc)
            escalation = (Escalation(self.label, trigger, score, "failed", ms=elapsed, enforced=enforced),)
            if not enforced:  # a calibration sample decides nothing, failed or not
                return Verdict(stage=self.name, escalations=escalation)
            bypass = Bypass(self.on_failure, f"{reason} ({self.name}.{code})", self.name)
            if self.on_failure == "allow":
                return Verdict(stage=self.name, bypass=bypass, escalations=escalation)
            return Verdict(self.on_failure, "guard_model_unavailable", None, f"{self.name}.{code}", self.name,
                           bypass=bypass, escalations=escalation)
        escalation = (Escalation(self.label, trigger, score, answer.verdict, answer.label, answer.category,
                                 answer.refusal, None if cached else round((time.perf_counter() - started) * 1000, 3),
                                 enforced),)
        action = {"safe": "allow", "unsafe": self.stage.unsafe, "controversial": self.stage.controversial}[
            answer.verdict]
        if not enforced or action == "allow":
            return Verdict(stage=self.name, escalations=escalation)
        return Verdict(action, answer.label, answer.score, f"{self.name}.{answer.label}", self.name,
                       escalations=escalation)

    @property
    def on_failure(self) -> str:
        return self.stage.on_failure


def sampled(text: str, share: float) -> bool:
    """Whether `text` is in a calibration sample of `share`: by its digest, so that the same text is
    always in or out (offline measurement and the gateway agree, and the cache stays useful)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2 ** 64


class BlacklistInspector:
    name = "blacklist"

    def __init__(self, stage: BlacklistStage) -> None:
        self.mask = stage.redact_mask
        self.rules = tuple(
            Rule(rule.id, rule.category, rule.action, tuple(rule.literals), tuple(rule.regexes), tuple(rule.allow))
            for rule in stage.rules
        )
        self.blacklist = Blacklist(list(self.rules))

    # A scan reads every view of the text: for a large text that is CPU work of tens of milliseconds
    # or more, done off the event loop so that other requests and the probes are served meanwhile; a
    # heavy request's in the scan process, at a lower priority (filters/scan_process.py).
    offload_chars = 16 * 1024

    async def inspect(self, text: str, ctx: Context) -> Verdict:
        return (await self.inspect_all([text], ctx))[0]

    async def inspect_all(self, texts: list[str], ctx: Context) -> list[Verdict]:
        """One verdict per text; a heavy request's texts are scanned in one call to the scan process."""
        if ctx.background:
            found = await scan_process.scan(self.blacklist, self.rules, texts)
        else:
            found = [await self._scan(text) for text in texts]
        return [self._verdict(text, matches, ctx) for text, matches in zip(texts, found, strict=True)]

    async def _scan(self, text: str) -> list[Match]:
        if len(text) > self.offload_chars:
            [matches] = await scan_process.on_thread(self.blacklist, [text])
            return matches
        return self.blacklist.scan(text)

    def _verdict(self, text: str, matches: list[Match], ctx: Context) -> Verdict:
        if ctx.ends_in is not None:
            after, upto = ctx.ends_in
            matches = [match for match in matches if after < match.original_end <= upto]
        if not matches:
            return ALLOW
        # The most severe, and of those the one that ends first: where a stream can first decide.
        deciding = min(matches, key=lambda match: (-SEVERITY[match.action], match.original_end))
        replacement = None
        if deciding.action == "redact":
            replacement = _redacted(text, [(m.original_start, m.original_end) for m in matches
                                           if m.action == "redact"], self.mask)
        return Verdict(deciding.action, deciding.category, 1.0, deciding.rule_id, self.name, replacement,
                       span=(deciding.original_start, deciding.original_end), view=deciding.view)


def _redacted(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    pieces, cursor = [], 0
    for start, end in sorted(spans):
        if start < cursor:  # overlapping spans: already masked
            start = cursor
        if end <= start:
            continue
        pieces += [text[cursor:start], mask]
        cursor = end
    return "".join(pieces) + text[cursor:]


class Pipeline:
    def __init__(self, policy: Policy, breakers: Breakers | None = None,
                 deployed: DeployedClassifier | None = None) -> None:
        """`deployed`: the classifier this deployment activated, which stages naming `builtin` use
        (None: the shipped one)."""
        self.policy = policy
        self.breakers = breakers
        self.deployed = deployed
        # Compiled once per stage list (the default's and each override's), not per request.
        self._compiled: dict[int, list[Inspector]] = {}
        # The same, cut into the runs that inspect_each awaits together, per `stages` choice.
        self._runs: dict[tuple[int, str], list[tuple[Inspector, ...]]] = {}

    def _inspectors(self, ctx: Context) -> list[Inspector]:
        stages = self.policy.stages_for(ctx.direction, ctx.tenant, ctx.route)
        key = id(stages)
        if key not in self._compiled:
            self._compiled[key] = [self._inspector(stage) for stage in stages]
        return self._compiled[key]

    def compile_all(self) -> None:
        """Compile every stage list now (the default's and each override's): a rule that cannot be
        compiled raises RuleError here, before the policy is activated, and no request pays for it."""
        for _, stages in self.policy.stage_lists():
            if id(stages) not in self._compiled:
                self._compiled[id(stages)] = [self._inspector(stage) for stage in stages]

    def _inspector(self, stage: Stage) -> Inspector:
        if isinstance(stage, BlacklistStage):
            return BlacklistInspector(stage)
        if isinstance(stage, ClassifierStage):
            deployed = self.deployed if stage.model == "builtin" else None
            return ClassifierInspector(stage, deployed.path if deployed is not None else stage.model)
        if isinstance(stage, ModerationStage):
            # One breaker per service, shared by every stage and policy version that calls it.
            breaker = self.breakers.get(f"moderation:{stage.url}") if self.breakers is not None else None
            return ModerationInspector(stage, breaker)
        if isinstance(stage, GuardModelStage):
            breaker = self.breakers.get(f"guard_model:{stage.url}") if self.breakers is not None else None
            return GuardModelInspector(stage, breaker)
        raise TypeError(f"no inspector for stage {stage!r}")

    @property
    def deployed_classifier(self) -> DeployedClassifier | None:
        """The activated classifier if any stage of the policy uses it."""
        if self.deployed is None:
            return None
        uses_builtin = any(isinstance(stage, ClassifierStage) and stage.model == "builtin"
                           for _, stages in self.policy.stage_lists() for stage in stages)
        return self.deployed if uses_builtin else None

    def slow_patterns(self) -> list[tuple[str, str]]:
        """(rule id, regex) of every compiled regex that has no literal atom and runs on every text."""
        return [pattern for inspectors in self._compiled.values() for inspector in inspectors
                if isinstance(inspector, BlacklistInspector) for pattern in inspector.blacklist.slow_patterns]

    async def run_golden_tests(self) -> list[GoldenResult]:
        results = []
        for test in self.policy.tests:
            ctx = Context(test.direction, test.tenant, test.route)
            results.append(GoldenResult(test, await self.inspect([test.text], ctx)))
        return results

    def has_expensive(self, ctx: Context) -> bool:
        return any(getattr(inspector, "expensive", False) for inspector in self._inspectors(ctx))

    def _stage_runs(self, ctx: Context, stages: str) -> list[tuple[Inspector, ...]]:
        """The inspectors to run, in policy order, cut into runs: a cheap stage alone, adjacent
        expensive ones together (they run concurrently), except that a stage that reads the earlier
        stages' verdicts starts a run of its own."""
        inspectors = self._inspectors(ctx)
        key = (id(inspectors), stages)
        runs = self._runs.get(key)
        if runs is None:
            runs = []
            for inspector in inspectors:
                expensive = _is_expensive(inspector)
                if (stages == "cheap" and expensive) or (stages == "expensive" and not expensive):
                    continue
                if expensive and runs and _is_expensive(runs[-1][-1]) and not _reads_earlier(inspector):
                    runs[-1] += (inspector,)
                else:
                    runs.append((inspector,))
            self._runs[key] = runs
        return runs

    async def inspect_each(self, texts: list[str], ctx: Context, stages: str = "all",
                           timings: dict[str, float] | None = None,
                           by_stage: list[dict[str, Verdict]] | None = None) -> list[Verdict]:
        """One verdict per text, the strongest of its stages' (the earlier stage's on a tie; an
        allow that carries scores beats a bare one). A text already blocked skips later stages.
        Adjacent expensive stages run concurrently, and the first block among them cancels the
        others still running (the request is blocked either way; which block is reported can then
        depend on which came first). `stages`: "all", or only the "cheap" or the "expensive" ones
        (streams run them apart). `timings`: milliseconds spent per stage are added to it. `by_stage`:
        given (empty), it receives each text's verdict of every stage that ran on it, by stage name."""
        verdicts = [ALLOW] * len(texts)
        seen: list[dict[str, Verdict]] = [{} for _ in texts]
        for run in self._stage_runs(ctx, stages):
            pending = [index for index, verdict in enumerate(verdicts) if verdict.action != "block"]
            if not pending:
                break
            if len(run) == 1:
                founds = [(run[0], await _run_stage(run[0], texts, pending, ctx, timings, seen))]
            else:
                founds = await _race(run, texts, pending, ctx, timings, seen)
            for inspector, found in founds:  # in policy order, so that the earlier stage wins a tie
                for index, verdict in zip(pending, found, strict=True):
                    verdicts[index] = stronger(verdicts[index], verdict)
                    seen[index][inspector.name] = verdict
        if by_stage is not None:
            by_stage.extend(seen)
        return verdicts

    async def inspect(self, texts: list[str], ctx: Context) -> Verdict:
        return strongest(await self.inspect_each(texts, ctx))


def _is_expensive(inspector: Inspector) -> bool:
    return getattr(inspector, "expensive", False)


def _reads_earlier(inspector: Inspector) -> bool:
    return getattr(inspector, "reads_earlier", False)


async def _run_stage(inspector: Inspector, texts: list[str], pending: list[int], ctx: Context,
                     timings: dict[str, float] | None, seen: list[dict[str, Verdict]]) -> list[Verdict]:
    """One stage on the pending texts, timed (even when cancelled) and in a span of its own. `seen`:
    each text's verdicts so far by stage, for a stage that reads them."""
    started = time.perf_counter()
    try:
        with child_span(f"inspect {inspector.name}", direction=ctx.direction, stage=inspector.name) as span:
            if _reads_earlier(inspector):
                found = await asyncio.gather(*(inspector.inspect(texts[index], replace(ctx, earlier=seen[index]))
                                               for index in pending))
            elif _is_expensive(inspector):  # awaited together, so that the texts share a micro-batch
                found = await asyncio.gather(*(inspector.inspect(texts[index], ctx) for index in pending))
            elif isinstance(inspector, BlacklistInspector):
                found = await inspector.inspect_all([texts[index] for index in pending], ctx)
            else:
                found = [await inspector.inspect(texts[index], ctx) for index in pending]
            if span is not None:
                span.set_attribute("action", strongest(found).action)
    finally:
        if timings is not None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            timings[inspector.name] = round(timings.get(inspector.name, 0.0) + elapsed_ms, 3)
    return found


async def _race(run: tuple[Inspector, ...], texts: list[str], pending: list[int], ctx: Context,
                timings: dict[str, float] | None,
                seen: list[dict[str, Verdict]]) -> list[tuple[Inspector, list[Verdict]]]:
    """Stages run concurrently; the first that blocks a text cancels the others still running.
    Returns the verdicts of the stages that finished, in policy order. A stage that raises cancels
    the others and its error propagates (as it would have run alone)."""
    tasks = [asyncio.ensure_future(_run_stage(inspector, texts, pending, ctx, timings, seen)) for inspector in run]
    try:
        running = set(tasks)
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            if any(verdict.action == "block" for task in done for verdict in task.result()):
                break
    finally:
        for task in tasks:
            task.cancel()  # no-op on a finished task
        await asyncio.gather(*tasks, return_exceptions=True)  # their timings are in before we return
    return [(inspector, task.result()) for inspector, task in zip(run, tasks, strict=True) if not task.cancelled()]


@dataclass(frozen=True)
class GoldenResult:
    test: GoldenTest
    verdict: Verdict

    @property
    def expected(self) -> str:
        return self.test.expect + (f" {self.test.rule}" if self.test.rule else "")

    @property
    def got(self) -> str:
        return self.verdict.action + (f" {self.verdict.rule_id}" if self.verdict.rule_id else "")

    @property
    def passed(self) -> bool:
        return self.verdict.action == self.test.expect and (
            self.test.rule is None or self.verdict.rule_id == self.test.rule
        )



def golden_failures(results: list[GoldenResult], policy: Policy) -> list[str]:
    """One `file:line: tests.N: ...` line per failed golden test (the line from the text that was loaded)."""
    failed = [(index, result) for index, result in enumerate(results) if not result.passed]
    if not failed:
        return []
    policy_file, policy_bytes = policy.source_bytes[0]
    root = parse_yaml(policy_bytes.decode("utf-8")).root
    return [f"{policy_file}:{line_of(root, ['tests', index])}: tests.{index}: golden test failed: "
            f"expected {result.expected}, got {result.got}: {result.test.text[:60]!r}" for index, result in failed]


def load_pipeline(path: Path, breakers: Breakers | None = None,
                  deployed: DeployedClassifier | None = None) -> Pipeline:
    """Load, validate and compile a policy file (CPU-bound: keep it off the event loop).
    Raises PolicyError, worded `file:line: ...` (or `file: rule ...` for a rule that cannot compile).
    `breakers`: the gateway's circuit breakers, for the stages that call a service (none in the CLI);
    `deployed`: the classifier that `builtin` means here (None: the shipped one)."""
    pipeline = Pipeline(load_policy(path), breakers, deployed)
    try:
        pipeline.compile_all()
    except (RuleError, ClassifierError, ModerationConfigError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
    return pipeline
