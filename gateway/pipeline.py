"""The inspection pipeline: a policy's stages run on texts and give one verdict.

Every stage implements `async def inspect(text, ctx) -> Verdict` (DESIGN.md). The verdict of a
request is the strongest of its stages' (block > redact > flag > allow), the first stage's on a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from filters.blacklist import Blacklist, Rule, RuleError
from policies.schema import Action, BlacklistStage, Direction, GoldenTest, Policy, PolicyError, Stage, load_policy
from policies.yaml_source import line_of, parse_yaml

_SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


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


ALLOW = Verdict()


class Inspector(Protocol):
    async def inspect(self, text: str, ctx: Context) -> Verdict: ...


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
        strongest = max(matches, key=lambda match: _SEVERITY[match.action])
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

    async def inspect(self, texts: list[str], ctx: Context) -> Verdict:
        verdict = ALLOW
        for text in texts:
            for inspector in self._inspectors(ctx):
                found = await inspector.inspect(text, ctx)
                if _SEVERITY[found.action] > _SEVERITY[verdict.action]:
                    verdict = found
                    if verdict.action == "block":
                        return verdict
        return verdict


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
    except RuleError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    return pipeline
