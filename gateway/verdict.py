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

    @property
    def note(self) -> str:
        return f"moderation bypassed: {self.reason} (on_failure: {self.outcome})"


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


ALLOW = Verdict()


def stronger(first: Verdict, second: Verdict) -> Verdict:
    """The verdict that wins: the more severe; on a tie `first`, except that an allow carrying scores
    beats a bare allow (the audit shows what was measured). The winner carries the loser's bypass
    when it has none of its own: a bypass is never hidden by another stage's, text's or check's verdict."""
    if SEVERITY[second.action] > SEVERITY[first.action] or (
            second.action == first.action == "allow" and first.scores is None and second.scores is not None):
        first, second = second, first
    if second.bypass is None or first.bypass is not None:
        return first
    return replace(first, bypass=second.bypass)


def strongest(verdicts: list[Verdict]) -> Verdict:
    """The verdict that wins among `verdicts`, in order (ALLOW for none)."""
    return reduce(stronger, verdicts, ALLOW)
