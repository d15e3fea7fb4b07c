"""Rolling out a new policy version under guard rails, and taking it back out by itself.

A version that passed validation and its golden tests still meets live traffic for the first time.
It is watched for `rollout_watch_s` against guard rails — its error rate, the p99 of its inspection
time, and its block rate against the version before it — and a breach restores the previous version
at once: an audit event, a metric, a log line. Requests never fail because of it: each request keeps
the version it started with, and the switch is one reference.

Modes (`rollout_mode`):
- `direct`: the new version serves all traffic at once, under watch;
- `canary`: it serves `rollout_canary_share` of requests (chosen by request id) until the watch ends;
- `shadow`: the previous version keeps enforcing; the new one is evaluated on the same input texts
  after the response has gone, and where the two decide differently it is logged and counted.
Once the watch ends without a breach (and with at least `rollout_min_requests` requests seen), the
new version is promoted (canary, shadow) or simply kept (direct).
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

RolloutMode = Literal["direct", "canary", "shadow"]
# Outcomes kept per version: enough for a stable p99 and rate, bounded memory.
WINDOW = 2000


@dataclass(frozen=True)
class GuardRails:
    watch_s: float = 60.0
    min_requests: int = 20
    max_error_rate: float = 0.05
    max_block_rate_increase: float = 0.25
    max_p99_inspect_ms: float = 250.0


class VersionStats:
    """The most recent outcomes of one policy version (blocked, failed, inspection ms). Judged after
    every request of a trial, so the rates and the p99 are kept up to date as outcomes come and go
    instead of being recomputed over the whole window each time."""

    def __init__(self) -> None:
        self.outcomes: deque[tuple[bool, bool, float]] = deque()
        self.blocked = 0
        self.failed = 0
        self.sorted_ms: list[float] = []

    def observe(self, blocked: bool, failed: bool, inspect_ms: float) -> None:
        if len(self.outcomes) == WINDOW:
            old_blocked, old_failed, old_ms = self.outcomes.popleft()
            self.blocked -= old_blocked
            self.failed -= old_failed
            del self.sorted_ms[bisect.bisect_left(self.sorted_ms, old_ms)]
        self.outcomes.append((blocked, failed, inspect_ms))
        self.blocked += blocked
        self.failed += failed
        bisect.insort(self.sorted_ms, inspect_ms)

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def block_rate(self) -> float:
        return self.blocked / len(self.outcomes) if self.outcomes else 0.0

    @property
    def error_rate(self) -> float:
        return self.failed / len(self.outcomes) if self.outcomes else 0.0

    @property
    def p99_inspect_ms(self) -> float:
        if not self.sorted_ms:
            return 0.0
        return self.sorted_ms[min(len(self.sorted_ms) - 1, int(len(self.sorted_ms) * 0.99))]


def breach(candidate: VersionStats, baseline: VersionStats | None, rails: GuardRails) -> str | None:
    """Which guard rail the candidate breaks, in words, or None. Judged only once it has
    `min_requests` outcomes; the block-rate rail needs as many for the baseline too."""
    if candidate.requests < rails.min_requests:
        return None
    if candidate.error_rate > rails.max_error_rate:
        return f"error rate {candidate.error_rate:.1%} > {rails.max_error_rate:.1%}"
    if candidate.p99_inspect_ms > rails.max_p99_inspect_ms:
        return f"p99 inspection time {candidate.p99_inspect_ms:.1f} ms > {rails.max_p99_inspect_ms:.1f} ms"
    if baseline is not None and baseline.requests >= rails.min_requests:
        increase = candidate.block_rate - baseline.block_rate
        if increase > rails.max_block_rate_increase:
            return (f"block rate {candidate.block_rate:.1%} vs {baseline.block_rate:.1%} before "
                    f"(+{increase:.1%} > +{rails.max_block_rate_increase:.1%})")
    return None


@dataclass
class Rollout:
    """A new version on trial: its digest, mode, start time and what it has met so far."""

    digest: str
    mode: RolloutMode
    share: float
    started: float = field(default_factory=time.monotonic)
    stats: VersionStats = field(default_factory=VersionStats)
    shadow_differences: int = 0

    def takes(self, request_id: str) -> bool:
        """Whether this request goes to the canary: a stable choice per request id."""
        bucket = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=4).digest(), "big")
        return bucket / 2**32 < self.share

    def watched_long_enough(self, rails: GuardRails) -> bool:
        return time.monotonic() - self.started >= rails.watch_s and self.stats.requests >= rails.min_requests

    def describe(self) -> dict:
        return {"digest": self.digest, "mode": self.mode, "share": self.share if self.mode == "canary" else None,
                "watched_s": round(time.monotonic() - self.started, 1), "requests": self.stats.requests,
                "block_rate": round(self.stats.block_rate, 4), "error_rate": round(self.stats.error_rate, 4),
                "p99_inspect_ms": round(self.stats.p99_inspect_ms, 3),
                "shadow_differences": self.shadow_differences if self.mode == "shadow" else None}
