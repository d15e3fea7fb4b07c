"""What a stage says about a text, and which of two verdicts wins.

This module imports nothing of the project: every layer that judges, records or reports verdicts can
use it. `stronger` is the one place that decides between verdicts (stages of one text, texts of one
request, checks of one stream, directions of one audit record).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import reduce
from typing import Literal

Action = Literal["allow", "flag", "redact", "block"]

SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


@dataclass(frozen=True)
class Bypass:
    """A stage that gave no answer and was passed over; `outcome` is what its `on_failure` made of it."""

    outcome: Action
    reason: str
    stage: str = "moderation"

    @property
    def note(self) -> str:
        return f"{self.stage} bypassed: {self.reason} (on_failure: {self.outcome})"


@dataclass(frozen=True)
class Escalation:
    """A text a guard model was asked about (a cascade's escalation), and what it answered."""

    stage: str  # the guard stage and its family, e.g. `guard_model.qwen3guard`
    trigger: str  # `band:<stage>.<label>`, `sample` (calibration: recorded, not enforced) or `always`
    # The earlier stage's score that put the text in the band (for `sample` and `always`: its `unsafe`
    # score, where one was measured): the cascade's agreement is the guard's verdict against it at 0.5.
    score: float | None
    verdict: str  # the guard's reading: safe, unsafe, controversial; `failed` when it gave no usable answer
    category: str | None = None  # our label for the guard's category
    guard_category: str | None = None  # the category as the guard named it
    refusal: bool | None = None  # the guard's reading of a response as a refusal (Qwen3Guard)
    ms: float | None = None  # the guard's latency; None for an answer from the cache
    enforced: bool = True

    def fields(self) -> dict[str, object]:
        return {name: value for name, value in self.__dict__.items() if value is not None}


@dataclass(frozen=True)
class Verdict:
    action: Action = "allow"
    category: str | None = None
    score: float | None = None
    rule_id: str | None = None
    stage: str | None = None
    replacement: str | None = None  # the redacted text, for `redact`
    scores: dict[str, float] | None = None  # every label's score, from a scoring stage
    bypass: Bypass | None = None  # a stage was passed over; kept whichever verdict wins, for audit and metrics
    # Where in the inspected text the deciding match lies, [start, end) in characters of the text as
    # given (a blacklist match); None for a verdict on the text as a whole.
    span: tuple[int, int] | None = None
    # Which view of the text the deciding blacklist match was found in ("text", "leet", "base64"...;
    # filters/views.py): the disguise, named for whoever reviews the decision.
    view: str | None = None
    # Guard model escalations behind this verdict; kept whichever verdict wins, like a bypass.
    escalations: tuple[Escalation, ...] = ()


ALLOW = Verdict()


def stronger(first: Verdict, second: Verdict) -> Verdict:
    """The verdict that wins: the more severe; on a tie `first`, except that an allow carrying scores
    beats a bare allow (the audit shows what was measured). The winner carries the loser's bypass
    when it has none of its own: a bypass is never hidden by another stage's, text's or check's verdict.
    Escalations of both are kept, the first's first."""
    escalations = first.escalations + second.escalations if second.escalations else first.escalations
    if SEVERITY[second.action] > SEVERITY[first.action] or (
            second.action == first.action == "allow" and first.scores is None and second.scores is not None):
        first, second = second, first
    if second.bypass is not None and first.bypass is None:
        first = replace(first, bypass=second.bypass)
    if escalations is not first.escalations:
        first = replace(first, escalations=escalations)
    return first


def strongest(verdicts: list[Verdict]) -> Verdict:
    """The verdict that wins among `verdicts`, in order (ALLOW for none)."""
    return reduce(stronger, verdicts, ALLOW)
