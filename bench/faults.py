#!/usr/bin/env python3
"""Goodput and latency of the gateway while its dependencies fail on a schedule, against the same run without faults.

Two runs of ``--duration`` seconds each (default 60), each with fresh servers: ``no-faults`` (the peer)
and ``faults``. Both start two fake model servers (tests/fake_upstream.py: a primary whose answers the
schedule can switch to HTTP 503 or 500, and a fallback), a fake moderation service
(tests/fake_moderation.py) and a ``wardgate serve`` process with ``--fallback-upstream``, a SQLite audit
log and a policy with a blacklist and a ``moderation`` stage per direction (``timeout_s: 0.5``; input
``on_failure: block``, output ``on_failure: allow``). N workers (``--concurrency``, default 16) send a
fixed mix, each request with a unique prompt: 11/20 allowed chat requests, 3/20 allowed streamed ones,
4/20 prompts the blacklist blocks (``bench.forbidden``) and 2/20 prompts the moderation service blocks
(``moderation.hate``). The run is cut into windows; in the faults run each fault holds for its window:

    twelfths  1       2-3        4-5     6             7             8-9     10            11-12
    phase     normal  hook_down  normal  upstream_503  upstream_500  normal  store_paused  normal

* ``hook_down``: the moderation service accepts connections and never answers (each call times out
  after 0.5 s until the hook's circuit breaker opens);
* ``upstream_503`` / ``upstream_500``: the primary model server answers every chat request with 503
  (retryable, counts against its breaker: the fallback takes over), then with 500 (by design neither
  retried nor counted: a model server's 500 is one failed generation);
* ``store_paused``: another connection holds the audit database's write lock (``BEGIN EXCLUSIVE``);
  ``audit_commit_timeout_s`` is half that window, after which a record is spilled to a local file and
  the response released; spilled records are replayed once the lock goes.

Breaker reset timeout and commit timeout scale with ``--duration`` (1/30 and 1/24 of it), so that a
short run keeps the shape of a long one.

How to read the figures
-----------------------
Every request has a client-side timeout equal to the sum of the configured bounds it can meet in series
(input hook + upstream retry deadline and total timeout + output hook + audit commit timeout, printed as
``client_timeout``): ``answered_in_time`` below 100% means a fault made the gateway exceed its own bounds.
A request's *intended outcome* is what the policy asks for: 200 with a complete answer for allowed
prompts (a stream ends with ``[DONE]`` and no error event), 400 WG1001 with its rule id for blocked ones,
and, while the hook is down (faults run only), 400 WG1001 ``moderation.unavailable`` for the prompts the
hook must judge (on_failure: block). Per phase (by the time a request was sent) and overall, for both
runs: requests, ``answered_in_time``, ``intended`` (share), ``goodput`` (intended outcomes per second of
the phase's windows), p50/p99 latency (timed-out requests count with their time), the outcomes seen, and
the ratios ``faults/no-faults``. While the hook is down its intended outcome is a refusal that costs
no upstream call, so that phase's goodput can exceed the peer's. ``recovery`` is how long after a fault
ended requests still missed their intended outcome (an open breaker waits for its reset timeout before
it tries the dependency again).
At the end of each run: request records in the audit log against requests sent (they must be equal:
every record is committed or spilled and replayed), the gateway's resilience counters from /metrics,
and whether ``wardgate audit verify`` passes.

The fakes and the load generator share one Python process (the fakes' behaviour is switched in
process); on a small machine that process, not the gateway, may limit throughput: compare the two runs,
not absolute numbers across machines.

Usage::

    .venv/bin/python bench/faults.py                    # 60 s per run
    .venv/bin/python bench/faults.py --duration 12 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from harness import (  # noqa: E402  (bench/harness.py)
    WARDGATE_BIN,
    BenchFailed,
    percentile,
    progress,
    ratio,
    wardgate_serving,
)

from tests.fake_moderation import FakeModeration  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

# The schedule in twelfths of the run: (phase, length). Each fault holds for its whole window.
SCHEDULE = (("normal", 1), ("hook_down", 2), ("normal", 2), ("upstream_503", 1), ("upstream_500", 1),
            ("normal", 2), ("store_paused", 1), ("normal", 2))
PHASES = ("normal", "hook_down", "upstream_503", "upstream_500", "store_paused")
# The request mix, cycled: allowed, streamed (allowed), blacklisted, blocked by the hook.
MIX = ("allowed",) * 11 + ("streamed",) * 3 + ("blacklisted",) * 4 + ("hook_blocked",) * 2
PROMPTS = {
    "allowed": "Write a short poem about the sea, number {n}.",
    "streamed": "Tell me a story about lighthouse {n}.",
    "blacklisted": "Give me the forbidden recipe, variant {n}.",
    "hook_blocked": "Something hateful about group {n}.",
}
BLACKLIST_RULE = "bench.forbidden"
HOOK_TIMEOUT_S = 0.5
RETRY_DEADLINE_S = 1.0
UPSTREAM_TOTAL_TIMEOUT_S = 2.0
STARTUP_TIMEOUT_S = 60.0
AUDIT_SETTLE_TIMEOUT_S = 30.0


class SwitchableUpstream(FakeUpstream):
    """The fake model server, with an error status the schedule switches chat answers to."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_status: int | None = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        status = self.fail_status
        if status is None:
            return await super()._chat(request)
        self._observe(request)
        return web.json_response({"error": {"message": "injected fault"}}, status=status)


@dataclass(frozen=True)
class Timing:
    """The run's length and the settings scaled to it."""

    duration_s: float
    concurrency: int

    @property
    def twelfth_s(self) -> float:
        return self.duration_s / 12

    @property
    def breaker_reset_s(self) -> float:
        return max(0.5, self.duration_s / 30)

    @property
    def commit_timeout_s(self) -> float:
        return max(0.25, self.twelfth_s / 2)

    @property
    def client_timeout_s(self) -> float:
        return HOOK_TIMEOUT_S + RETRY_DEADLINE_S + UPSTREAM_TOTAL_TIMEOUT_S + HOOK_TIMEOUT_S + self.commit_timeout_s

    def windows(self) -> list[tuple[str, float, float]]:
        """(phase, start, end) in seconds from the start of the load."""
        bounds = itertools.accumulate((length for _, length in SCHEDULE), initial=0)
        starts = list(bounds)
        return [(phase, starts[i] * self.twelfth_s, starts[i + 1] * self.twelfth_s)
                for i, (phase, _) in enumerate(SCHEDULE)]

    def phase_at(self, at_s: float) -> str:
        for phase, start, end in self.windows():
            if start <= at_s < end:
                return phase
        return SCHEDULE[-1][0]

    def phase_seconds(self, phase: str) -> float:
        return sum(end - start for name, start, end in self.windows() if name == phase)


@dataclass(frozen=True)
class Sample:
    kind: str
    sent_s: float  # from the start of the load
    latency_s: float
    outcome: str  # "200", "200 incomplete", "400 WG1001 bench.forbidden", "timeout", ...
    in_time: bool


@dataclass
class Servers:
    primary: SwitchableUpstream
    fallback: FakeUpstream
    moderation: FakeModeration
    gateway_url: str
    audit_db: Path
    state_dir: Path


# --------------------------------------------------------------------------
# Servers


def write_policy(path: Path, moderation_url: str) -> None:
    def hook(on_failure: str) -> dict:
        return {"type": "moderation", "url": moderation_url, "timeout_s": HOOK_TIMEOUT_S,
                "block": {"hate": 0.5}, "on_failure": on_failure}

    blacklist = {"type": "blacklist", "rules": [{"id": BLACKLIST_RULE, "category": "illegal",
                                                 "literals": ["forbidden recipe"]}]}
    policy = {"version": "bench-faults", "input": {"stages": [blacklist, hook("block")]},
              "output": {"stages": [hook("allow")]}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def write_config(path: Path, timing: Timing, state_dir: Path) -> None:
    config = {
        "state_dir": str(state_dir),
        "breaker_fail_max": 5,
        "breaker_reset_timeout_s": timing.breaker_reset_s,
        "retry_deadline_s": RETRY_DEADLINE_S,
        "total_timeout_s": UPSTREAM_TOTAL_TIMEOUT_S,
        "read_timeout_s": UPSTREAM_TOTAL_TIMEOUT_S,
        "audit_commit_timeout_s": timing.commit_timeout_s,
        "log_level": "warning",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextmanager
def servers(workdir: Path, timing: Timing) -> Iterator[Servers]:
    """The fakes and a gateway in front of them, for the duration of the block."""
    primary = SwitchableUpstream().start()
    fallback = FakeUpstream().start()
    moderation = FakeModeration().start()
    policy, config, audit_db, state_dir = (workdir / "policy.yaml", workdir / "wardgate.yaml",
                                           workdir / "audit.sqlite3", workdir / "state")
    write_policy(policy, moderation.url + "/v1/moderations")
    write_config(config, timing, state_dir)
    arguments = ["--config", str(config), "--upstream", primary.url, "--fallback-upstream", fallback.url,
                 "--policy", str(policy), "--audit-dsn", str(audit_db)]
    try:
        with wardgate_serving(arguments, workdir / "wardgate.log", STARTUP_TIMEOUT_S) as url:
            yield Servers(primary, fallback, moderation, url, audit_db, state_dir)
    finally:
        for fake in (primary, fallback, moderation):
            fake.stop()


# --------------------------------------------------------------------------
# Faults


class StoreLock:
    """Holds the SQLite audit database's write lock from a connection of our own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connection: sqlite3.Connection | None = None

    def take(self) -> None:
        # Waits (up to 10 s) for a commit under way; the gateway's next commit then waits on us.
        self.connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self.connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.connection is not None:
            self.connection.execute("COMMIT")
            self.connection.close()
            self.connection = None


async def inject(fault: str, on: bool, setup: Servers, lock: StoreLock) -> None:
    if fault == "hook_down":
        setup.moderation.behaviour = "hang" if on else "ok"
    elif fault in ("upstream_503", "upstream_500"):
        setup.primary.fail_status = int(fault[-3:]) if on else None
    elif fault == "store_paused":
        await asyncio.to_thread(lock.take if on else lock.release)


async def run_schedule(timing: Timing, started: float, setup: Servers, lock: StoreLock) -> None:
    """Switches each fault on at the start of its window and off at its end."""
    for phase, start, end in timing.windows():
        if phase == "normal":
            continue
        await asyncio.sleep(max(0.0, started + start - time.monotonic()))
        progress(f"{phase}: on")
        await inject(phase, True, setup, lock)
        try:
            await asyncio.sleep(max(0.0, started + end - time.monotonic()))
        finally:
            await inject(phase, False, setup, lock)
            progress(f"{phase}: off")


async def trim_fake_records(setup: Servers, until: float) -> None:
    """The fake moderation service keeps every body and header it saw (for the tests); at a few
    thousand calls a second that would grow for the whole run, so it is emptied every second."""
    while time.monotonic() < until:
        with setup.moderation.seen.lock:
            setup.moderation.seen.bodies.clear()
            setup.moderation.seen.headers.clear()
        await asyncio.sleep(1.0)


# --------------------------------------------------------------------------
# Load


def request_body(kind: str, n: int) -> dict:
    body: dict = {"model": "echo", "messages": [{"role": "user", "content": PROMPTS[kind].format(n=n)}]}
    if kind == "streamed":
        body["stream"] = True
    return body


async def send(session: aiohttp.ClientSession, url: str, kind: str, n: int, timeout_s: float) -> tuple[str, bool]:
    """One request, read to its end: (outcome, answered in time)."""
    try:
        async with session.post(url + "/v1/chat/completions", json=request_body(kind, n),
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            text = await response.text()
    except TimeoutError:
        return "timeout", False
    except aiohttp.ClientError as exc:
        return f"client error {type(exc).__name__}", False
    return classify(response.status, text, kind), True


def classify(status: int, text: str, kind: str) -> str:
    if status == 200:
        if kind == "streamed":
            complete = text.endswith("data: [DONE]\n\n") and '"error"' not in text
        else:
            complete = '"choices"' in text
        return "200" if complete else "200 incomplete"
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} (not an error body)"
    return " ".join(str(part) for part in (status, error.get("code"), error.get("rule_id")) if part)


def intended_outcome(kind: str, hook_down: bool) -> str:
    if kind == "blacklisted":  # the blacklist runs before the hook: down or not, it decides
        return f"400 WG1001 {BLACKLIST_RULE}"
    if hook_down:
        return "400 WG1001 moderation.unavailable"
    return "400 WG1001 moderation.hate" if kind == "hook_blocked" else "200"


async def check(url: str, timeout_s: float) -> int:
    """One request of each kind before the load: a misconfigured setup must not be measured."""
    async with aiohttp.ClientSession() as session:
        for n, kind in enumerate(dict.fromkeys(MIX)):
            outcome, _ = await send(session, url, kind, -1 - n, timeout_s)
            if outcome != intended_outcome(kind, hook_down=False):
                raise BenchFailed(f"check request ({kind}) answered {outcome!r}")
    return len(dict.fromkeys(MIX))


async def load(setup: Servers, timing: Timing, faults: bool) -> list[Sample]:
    samples: list[Sample] = []
    numbers = itertools.count()
    lock = StoreLock(setup.audit_db)
    started = time.monotonic()
    end = started + timing.duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        while (sent := time.monotonic()) < end:
            n = next(numbers)
            kind = MIX[n % len(MIX)]
            outcome, in_time = await send(session, setup.gateway_url, kind, n, timing.client_timeout_s)
            samples.append(Sample(kind, sent - started, time.monotonic() - sent, outcome, in_time))

    connector = aiohttp.TCPConnector(limit=timing.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [worker(session) for _ in range(timing.concurrency)] + [trim_fake_records(setup, end)]
        if faults:
            tasks.append(run_schedule(timing, started, setup, lock))
        try:
            await asyncio.gather(*tasks)
        finally:
            await asyncio.to_thread(lock.release)  # interrupted mid-pause: never leave the store locked
    return samples


# --------------------------------------------------------------------------
# Audit log and metrics


def request_records(audit_db: Path) -> int:
    with sqlite3.connect(audit_db, timeout=10) as connection:
        return int(connection.execute("SELECT count(*) FROM audit_records WHERE kind = 'request'").fetchone()[0])


def settle_audit(audit_db: Path, expected: int) -> tuple[int, float]:
    """Waits (bounded) until the audit log holds `expected` request records: spilled ones are replayed
    once the store answers again. Returns the count and how long it took."""
    started = time.monotonic()
    while (count := request_records(audit_db)) < expected and time.monotonic() - started < AUDIT_SETTLE_TIMEOUT_S:
        time.sleep(0.2)
    return count, time.monotonic() - started


RESILIENCE_METRICS = ("wardgate_audit_records_total", "wardgate_upstream_fallbacks_total",
                      "wardgate_upstream_retries_total", "wardgate_moderation_bypass_total",
                      "wardgate_breaker_transitions_total")


def resilience_metrics(url: str) -> list[tuple[str, float]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if line.startswith(RESILIENCE_METRICS):
            name, _, value = line.rpartition(" ")
            samples.append((name, float(value)))
    return samples


def verify_audit(audit_db: Path, state_dir: Path) -> tuple[bool, str]:
    done = subprocess.run([str(WARDGATE_BIN), "audit", "verify", "--audit-dsn", str(audit_db),
                           "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=300)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


# --------------------------------------------------------------------------
# A run and its report


@dataclass(frozen=True)
class PhaseFigures:
    requests: int
    in_time: float  # share
    intended: float  # share
    goodput: float  # intended outcomes per second
    p50_ms: float
    p99_ms: float
    outcomes: Counter


@dataclass(frozen=True)
class RunResult:
    name: str
    phases: dict[str, PhaseFigures]
    recovery_s: dict[str, float]
    sent: int
    answered: int
    records: int
    settle_s: float
    records_after_stop: int
    metrics: list[tuple[str, float]]
    verified: bool
    verify_line: str


def figures(samples: list[Sample], seconds: float, faults: bool, timing: Timing) -> PhaseFigures:
    intended = sum(1 for sample in samples if is_intended(sample, faults, timing))
    latencies = [sample.latency_s * 1000 for sample in samples]
    return PhaseFigures(
        requests=len(samples),
        in_time=ratio(sum(sample.in_time for sample in samples), len(samples)),
        intended=ratio(intended, len(samples)),
        goodput=ratio(intended, seconds),
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        outcomes=Counter(sample.outcome for sample in samples),
    )


def is_intended(sample: Sample, faults: bool, timing: Timing) -> bool:
    hook_down = faults and timing.phase_at(sample.sent_s) == "hook_down"
    return sample.outcome == intended_outcome(sample.kind, hook_down)


def recovery(samples: list[Sample], faults: bool, timing: Timing) -> dict[str, float]:
    """Per fault: seconds after its window ended until the last request (sent in the normal window
    that follows) that missed its intended outcome; 0 when none did."""
    windows = timing.windows()
    result = {}
    for (phase, _, end), (after, _, after_end) in itertools.pairwise(windows):
        if phase == "normal" or after != "normal":
            continue
        missed = [sample.sent_s - end for sample in samples
                  if end <= sample.sent_s < after_end and not is_intended(sample, faults, timing)]
        result[phase] = max(missed, default=0.0)
    return result


def measure(name: str, faults: bool, timing: Timing, keep_workdir: bool) -> RunResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"wardgate-faults-{name}-"))
    try:
        with servers(workdir, timing) as setup:
            progress(f"{name}: gateway at {setup.gateway_url}, {timing.duration_s:.0f} s of load")
            checked = asyncio.run(check(setup.gateway_url, timing.client_timeout_s))
            samples = asyncio.run(load(setup, timing, faults))
            sent = checked + len(samples)
            answered = checked + sum(sample.in_time for sample in samples)
            progress(f"{name}: {len(samples)} requests; waiting for the audit log to hold them all")
            records, settle_s = settle_audit(setup.audit_db, sent)
            metrics = resilience_metrics(setup.gateway_url)
        # The gateway has stopped: its writer committed what was queued and replayed any spill.
        records_after_stop = request_records(setup.audit_db)
        verified, verify_line = verify_audit(setup.audit_db, setup.state_dir)
    except BenchFailed as exc:
        raise BenchFailed(f"{name}: {exc} (workdir kept: {workdir})") from None
    finally:
        if keep_workdir:
            progress(f"{name}: workdir kept: {workdir}")
    if not keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    by_phase = {phase: [sample for sample in samples if timing.phase_at(sample.sent_s) == phase]
                for phase in PHASES}
    phases = {phase: figures(by_phase[phase], timing.phase_seconds(phase), faults, timing) for phase in PHASES}
    phases["all"] = figures(samples, timing.duration_s, faults, timing)
    return RunResult(name, phases, recovery(samples, faults, timing), sent, answered, records, settle_s,
                     records_after_stop, metrics, verified, verify_line)


def report(runs: list[RunResult], timing: Timing, load_before: float) -> None:
    print(f"# {timing.duration_s:.0f} s per run, {timing.concurrency} workers, load average before: {load_before:.2f}")
    print(f"# client_timeout: {timing.client_timeout_s:.2f} s (hook {HOOK_TIMEOUT_S} + retry deadline "
          f"{RETRY_DEADLINE_S} + upstream total {UPSTREAM_TOTAL_TIMEOUT_S} + hook {HOOK_TIMEOUT_S} + audit commit "
          f"{timing.commit_timeout_s:.2f})")
    print(f"# breaker_reset_timeout_s: {timing.breaker_reset_s:.2f}, audit_commit_timeout_s: "
          f"{timing.commit_timeout_s:.2f}, windows: "
          + ", ".join(f"{phase} {start:.0f}-{end:.0f} s" for phase, start, end in timing.windows()))
    for run in runs:
        for phase, f in run.phases.items():
            key = f"{run.name}.{phase}"
            print(f"{key}.requests: {f.requests} requests")
            print(f"{key}.answered_in_time: {f.in_time:.2%}")
            print(f"{key}.intended: {f.intended:.2%}")
            print(f"{key}.goodput: {f.goodput:.0f} req/s")
            print(f"{key}.p50: {f.p50_ms:.1f} ms")
            print(f"{key}.p99: {f.p99_ms:.1f} ms")
            for outcome, count in f.outcomes.most_common():
                print(f"{key}.outcome[{outcome}]: {count} requests")
        for fault, seconds in run.recovery_s.items():
            print(f"{run.name}.{fault}.recovery: {seconds:.2f} s")
        print(f"{run.name}.audit.requests_sent: {run.sent} requests")
        print(f"{run.name}.audit.requests_answered: {run.answered} requests")
        print(f"{run.name}.audit.request_records: {run.records} records (after {run.settle_s:.1f} s)")
        print(f"{run.name}.audit.request_records_after_stop: {run.records_after_stop} records")
        print(f"{run.name}.audit.records_match: {'yes' if run.records_after_stop == run.sent else 'NO'}")
        print(f"{run.name}.audit.verify: {'pass' if run.verified else 'FAIL'} ({run.verify_line})")
        for name, value in run.metrics:
            print(f"{run.name}.gateway.{name}: {value:.0f}")
    peer = {run.name: run for run in runs}
    if {"faults", "no-faults"} <= peer.keys():
        for phase in peer["faults"].phases:
            faulty, clean = peer["faults"].phases[phase], peer["no-faults"].phases[phase]
            print(f"faults/no-faults.{phase}.goodput: {ratio(faulty.goodput, clean.goodput):.3f}")
            print(f"faults/no-faults.{phase}.p50: {ratio(faulty.p50_ms, clean.p50_ms):.2f}")
            print(f"faults/no-faults.{phase}.p99: {ratio(faulty.p99_ms, clean.p99_ms):.2f}")
    for run in runs:
        if run.phases["all"].in_time < 1 or run.records_after_stop != run.sent or not run.verified:
            print(f"WARNING: {run.name}: requests past their timeout, audit records missing or verify failed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run (default 60)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent workers (default 16)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep each run's configs, logs and audit log")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not WARDGATE_BIN.exists():
        print(f"error: {WARDGATE_BIN} not installed", file=sys.stderr)
        return 2
    # SIGTERM takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    timing = Timing(args.duration, args.concurrency)
    load_before = os.getloadavg()[0]
    try:
        runs = [measure(name, faults, timing, args.keep_workdir)
                for name, faults in (("no-faults", False), ("faults", True))]
    except BenchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    report(runs, timing, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
