"""The inspection pipeline: a policy's stages run on texts and give one verdict.

Every stage implements `async def inspect(text, ctx) -> Verdict` (DESIGN.md). The verdict of a
request is the strongest of its stages' (block > redact > flag > allow), the first stage's on a tie.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from classifiers.labels import ClassifierError
from filters.blacklist import Blacklist, Rule, RuleError
from gateway.tracing import child_span
from policies.schema import (
    Action,
    BlacklistStage,
    ClassifierStage,
    Direction,
    GoldenTest,
    Policy,
    PolicyError,
    Stage,
    load_policy,
)
from policies.yaml_source import line_of, parse_yaml

SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


@dataclass(frozen=True)
class Context:
    direction: Direction
    tenant: str | None = None
    route: str | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Verdict:
    action: Action = "allow"
    category: str | None = None
    score: float | None = None
    rule_id: str | None = None
    stage: str | None = None
    replacement: str | None = None  # the redacted text, for `redact`
    scores: dict[str, float] | None = None  # every label's score, from a scoring stage


ALLOW = Verdict()


class Inspector(Protocol):
    name: str

    async def inspect(self, text: str, ctx: Context) -> Verdict: ...


class ClassifierInspector:
    """The risk classifier stage. Texts of one request are scored concurrently, so that the
    micro-batcher puts them (and other requests') into one batch."""

    name = "classifier"
    expensive = True  # a stream runs it once per hold-back window, not at every event

    def __init__(self, stage: ClassifierStage) -> None:
        from classifiers.registry import shared_batcher  # torch loads only where a policy uses the classifier

        self.batcher = shared_batcher(stage.model, stage.quantize)
        self.block = stage.block
        self.flag = stage.flag

    async def inspect(self, text: str, ctx: Context) -> Verdict:
        if not text.strip():
            return ALLOW
        row = await self.batcher.score(text)
        scores = {name: round(float(value), 4) for name, value in zip(self.batcher.labels, row, strict=True)}
        for action, thresholds in (("block", self.block), ("flag", self.flag)):
            over = [(scores[label] - threshold, label) for label, threshold in thresholds.items()
                    if scores[label] >= threshold]
            if over:
                label = max(over)[1]
                return Verdict(action, label, scores[label], f"classifier.{label}", self.name, scores=scores)
        return Verdict(scores=scores, stage=self.name)


class BlacklistInspector:
    name = "blacklist"

    def __init__(self, stage: BlacklistStage) -> None:
        self.mask = stage.redact_mask
        self.blacklist = Blacklist([
            Rule(rule.id, rule.category, rule.action, tuple(rule.literals), tuple(rule.regexes), tuple(rule.allow))
            for rule in stage.rules
        ])

    async def inspect(self, text: str, ctx: Context) -> Verdict:
        matches = self.blacklist.scan(text)
        if not matches:
            return ALLOW
        strongest = max(matches, key=lambda match: SEVERITY[match.action])
        replacement = None
        if strongest.action == "redact":
            replacement = _redacted(text, [(m.original_start, m.original_end) for m in matches
                                           if m.action == "redact"], self.mask)
        return Verdict(strongest.action, strongest.category, 1.0, strongest.rule_id, self.name, replacement)


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


def _inspector(stage: Stage) -> Inspector:
    if isinstance(stage, BlacklistStage):
        return BlacklistInspector(stage)
    if isinstance(stage, ClassifierStage):
        return ClassifierInspector(stage)
    raise TypeError(f"no inspector for stage {stage!r}")


class Pipeline:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # Compiled once per stage list (the default's and each override's), not per request.
        self._compiled: dict[int, list[Inspector]] = {}

    def _inspectors(self, ctx: Context) -> list[Inspector]:
        stages = self.policy.stages_for(ctx.direction, ctx.tenant, ctx.route)
        key = id(stages)
        if key not in self._compiled:
            self._compiled[key] = [_inspector(stage) for stage in stages]
        return self._compiled[key]

    def compile_all(self) -> None:
        """Compile every stage list now (the default's and each override's): a rule that cannot be
        compiled raises RuleError here, before the policy is activated, and no request pays for it."""
        for _, stages in self.policy.stage_lists():
            if id(stages) not in self._compiled:
                self._compiled[id(stages)] = [_inspector(stage) for stage in stages]

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

    async def inspect_each(self, texts: list[str], ctx: Context, stages: str = "all",
                           timings: dict[str, float] | None = None) -> list[Verdict]:
        """One verdict per text, the strongest of its stages' (the earlier stage's on a tie; an
        allow that carries scores beats a bare one). A text already blocked skips later stages.
        `stages`: "all", or only the "cheap" or the "expensive" ones (streams run them apart).
        `timings`: milliseconds spent per stage are added to it."""
        verdicts = [ALLOW] * len(texts)
        for inspector in self._inspectors(ctx):
            expensive = getattr(inspector, "expensive", False)
            if (stages == "cheap" and expensive) or (stages == "expensive" and not expensive):
                continue
            pending = [index for index, verdict in enumerate(verdicts) if verdict.action != "block"]
            if not pending:
                break
            started = time.perf_counter()
            with child_span(f"inspect {inspector.name}", direction=ctx.direction, stage=inspector.name) as span:
                if expensive:  # awaited together, so that the texts share a micro-batch
                    found = await asyncio.gather(*(inspector.inspect(texts[index], ctx) for index in pending))
                else:
                    found = [await inspector.inspect(texts[index], ctx) for index in pending]
                if span is not None:
                    span.set_attribute("action", strongest(found).action)
            if timings is not None:
                elapsed_ms = (time.perf_counter() - started) * 1000
                timings[inspector.name] = round(timings.get(inspector.name, 0.0) + elapsed_ms, 3)
            for index, verdict in zip(pending, found, strict=True):
                current = verdicts[index]
                if SEVERITY[verdict.action] > SEVERITY[current.action] or (
                        verdict.action == current.action and current.scores is None and verdict.scores is not None):
                    verdicts[index] = verdict
        return verdicts

    async def inspect(self, texts: list[str], ctx: Context) -> Verdict:
        return strongest(await self.inspect_each(texts, ctx))


def strongest(verdicts: list[Verdict]) -> Verdict:
    """The most severe verdict, the first one on a tie; ALLOW for none."""
    return max(verdicts, key=lambda verdict: SEVERITY[verdict.action], default=ALLOW)


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


def load_pipeline(path: Path) -> Pipeline:
    """Load, validate and compile a policy file (CPU-bound: keep it off the event loop).
    Raises PolicyError, worded `file:line: ...` (or `file: rule ...` for a rule that cannot compile)."""
    pipeline = Pipeline(load_policy(path))
    try:
        pipeline.compile_all()
    except (RuleError, ClassifierError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
    return pipeline
