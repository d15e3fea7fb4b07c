"""The inspection pipeline: a policy's stages run on texts and give one verdict.

Every stage implements `async def inspect(text, ctx) -> Verdict` (DESIGN.md). The verdict of a
request is the strongest of its stages' (block > redact > flag > allow), the first stage's on a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from filters.blacklist import Blacklist, Rule
from policies.schema import Action, BlacklistStage, Direction, GoldenTest, Policy, Stage

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
    def passed(self) -> bool:
        return self.verdict.action == self.test.expect and (
            self.test.rule is None or self.verdict.rule_id == self.test.rule
        )


async def run_golden_tests(policy: Policy) -> list[GoldenResult]:
    pipeline = Pipeline(policy)
    results = []
    for test in policy.tests:
        ctx = Context(test.direction, test.tenant, test.route)
        results.append(GoldenResult(test, await pipeline.inspect([test.text], ctx)))
    return results
