#!/usr/bin/env python3
"""A guard model cascade: what share of texts it escalates, what it adds to latency, and what it could
gain in quality, against the classifier alone, in one run.

Texts: ``--texts`` prompts (default 3000, half English, half Chinese) from our own validation split
(``classifiers.data.load_examples`` + ``split``; never trained on), chosen by a hash of the text
(deterministic, independent of the data's order), scored in this process by the shipped classifier
(``builtin``, int8).

Parts:

1. **Escalation share** - the share of texts whose ``unsafe`` score lies in the band [0.2, 0.8]
   (inclusive, as ``when`` reads it): the texts a cascade policy would send to the guard model.
2. **Latency** - two ``wardgate serve`` in front of the fake model server (tests/fake_upstream.py),
   both with ``--audit-dsn none``: the peer's only input stage is ``{type: classifier, block: {unsafe:
   0.8}}``; the cascade's adds ``{type: guard_model, family: qwen3guard, when: {classifier: {unsafe:
   [0.2, 0.8]}}}`` against a fake guard server (tests/fake_guard.py) that answers every call after 50 ms
   (``--guard-ms``). An open-loop load of ``--rate`` requests/s to each (default 20; request i is sent
   at i / rate, to the cascade half a period after the peer, so that both see the same machine) for
   ``--duration`` s (default 30), one text of part 1 as the user message, the same texts in the same
   order to both. Latency runs from a request's scheduled send time to its whole answer. A request the
   classifier or the guard blocks (400 WG1001) is an answer; anything else that is not a 200 is an error
   and invalidates the figures. Reported: p50 / p99 of both and the added latency (cascade - peer) over
   the allowed requests (200), over the requests whose text part 1 put in the band (the in-process
   score; the gateway scores long texts by windows, so it may differ at the edges), and over all
   requests (a blocked one waits for the refusal floor, 100 ms by default, in both), and the
   escalations the cascade gateway counted (``wardgate_guard_escalations_total``).
3. **Quality, with a SIMULATED guard** - no guard model is run: the guard's answer on a text is its true
   label, flipped with probability ``--guard-errors`` (default 5% and 15%; each flip drawn from a hash
   of the text and the draw number, averaged over ``--draws`` draws, default 20). Decisions: the
   classifier alone at 0.5 (the shipped default policy's threshold) and at 0.8 (the cascade's policy
   without its guard stage); the cascade: blocked at or above 0.8, the guard's answer inside the band,
   allowed below it. AUPRC is not defined for a hard verdict: recall on unsafe texts, the false-block
   rate on safe ones, and F1, at each decision. These figures say what the band can gain with a guard of
   that error rate on these texts; a real guard's errors are not random and correlate with the
   classifier's (the hard texts are hard for both), so they are an upper bound of a kind, not a
   measurement of any guard model.

On a small machine the gateways, the fake servers and this load generator share the cores: compare
the peer and the cascade of one run, not runs across machines.

Usage::

    .venv/bin/python bench/cascade.py                       # ~2 minutes
    .venv/bin/python bench/cascade.py --texts 1000 --duration 10 --guard-errors 0 0.05 0.15
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from harness import BenchFailed, http, percentile, progress, wardgate_serving  # noqa: E402  (bench/harness.py)

from tests.fake_guard import FakeGuard  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

BAND = (0.2, 0.8)
DEFAULT_THRESHOLD = 0.5  # the shipped default policy's classifier block threshold
STARTUP_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 30.0
WARMUP_REQUESTS = 20
GUARD_MODEL = "Qwen3Guard-Gen-0.6B"


@dataclass(frozen=True)
class Texts:
    texts: list[str]
    langs: list[str]
    unsafe: np.ndarray  # the true labels, 0/1
    scores: np.ndarray  # the classifier's unsafe score


@dataclass
class Target:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    escalated_s: list[float] = field(default_factory=list)  # the latencies of texts in the band
    allowed_s: list[float] = field(default_factory=list)  # the latencies of requests answered 200
    answers: Counter = field(default_factory=Counter)


def pick_texts(count: int) -> Texts:
    from classifiers.data import load_examples, split
    from classifiers.registry import BUILTIN_DIR
    from classifiers.runtime import RiskClassifier

    progress("loading the validation split")
    _, valid = split(load_examples())
    chosen = []
    for lang, want in (("en", count // 2), ("zh", count - count // 2)):
        pool = sorted((e for e in valid if e.role == "prompt" and e.lang == lang),
                      key=lambda e: hashlib.sha256(e.text.encode()).digest())
        if len(pool) < want:
            raise BenchFailed(f"only {len(pool)} {lang} prompts in the validation split, {want} wanted")
        chosen.append(pool[:want])
    # Interleaved, so that the load mixes both languages from its first second.
    examples = [e for pair in zip(*chosen, strict=False) for e in pair] + chosen[1][len(chosen[0]):]
    texts = [e.text for e in examples]
    progress(f"scoring {len(texts)} texts with the shipped classifier (int8)")
    classifier = RiskClassifier.load(BUILTIN_DIR, "int8")
    scores = np.concatenate([classifier.score(texts[start:start + 32])[:, 0] for start in range(0, len(texts), 32)])
    return Texts(texts, [e.lang for e in examples], np.array([int(e.unsafe) for e in examples]), scores)


def in_band(scores: np.ndarray) -> np.ndarray:
    return (scores >= BAND[0]) & (scores <= BAND[1])


# ---------------------------------------------------------------------------------------------
# Part 3: quality with a simulated guard


def flips(texts: list[str], error: float, draw: int) -> np.ndarray:
    """Whether the simulated guard gets each text wrong in this draw: a hash of the draw and the text."""
    return np.array([int.from_bytes(hashlib.sha256(f"{draw}\x00{text}".encode()).digest()[:8], "big") / 2**64
                     < error for text in texts])


def rates(blocked: np.ndarray, unsafe: np.ndarray) -> tuple[float, float, float]:
    """Recall on unsafe texts, false-block rate on safe ones, F1."""
    hits = float((blocked & (unsafe == 1)).sum())
    recall = hits / max(1, int(unsafe.sum()))
    false_block = float((blocked & (unsafe == 0)).sum()) / max(1, int((unsafe == 0).sum()))
    precision = hits / max(1, int(blocked.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return recall, false_block, f1


def quality(texts: Texts, errors: list[float], draws: int) -> list[tuple[str, tuple[float, float, float], float]]:
    """(decision, (recall, false-block rate, F1), share sent to the guard) per decision."""
    scores, unsafe = texts.scores, texts.unsafe
    band = in_band(scores) & (scores < BAND[1])  # a text at the top of the band the classifier blocks first
    rows = [(f"classifier alone, block >= {DEFAULT_THRESHOLD} (default policy)",
             rates(scores >= DEFAULT_THRESHOLD, unsafe), 0.0),
            (f"classifier alone, block >= {BAND[1]} (the cascade without its guard)",
             rates(scores >= BAND[1], unsafe), 0.0)]
    for error in errors:
        found = []
        for draw in range(draws):
            guard_says_unsafe = (unsafe == 1) ^ flips(texts.texts, error, draw)
            found.append(rates((scores >= BAND[1]) | (band & guard_says_unsafe), unsafe))
        rows.append((f"cascade, SIMULATED guard wrong on {100 * error:g}% of texts",
                     tuple(float(value) for value in np.mean(found, axis=0)), float(band.mean())))
    return rows


# ---------------------------------------------------------------------------------------------
# Part 2: latency through two gateways


def policy_file(directory: Path, name: str, guard_url: str | None) -> Path:
    stages: list[dict] = [{"type": "classifier", "block": {"unsafe": BAND[1]}}]
    if guard_url is not None:
        stages.append({"type": "guard_model", "url": guard_url + "/v1/chat/completions", "family": "qwen3guard",
                       "model": GUARD_MODEL, "when": {"classifier": {"unsafe": list(BAND)}}, "timeout_s": 2.0,
                       "max_concurrency": 64, "on_failure": "allow"})
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": f"bench-cascade-{name}", "input": {"stages": stages},
                                    "output": {"stages": []}}, sort_keys=False))
    return path


def chat(text: str) -> bytes:
    return json.dumps({"model": "echo", "max_tokens": 16, "messages": [{"role": "user", "content": text}]},
                      ensure_ascii=False).encode()


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    try:
        async with session.post(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
            text = await response.text()
            if response.status == 400 and '"WG1001"' in text:
                return "blocked"
            return "200" if response.status == 200 else f"{response.status}"
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return f"client error {type(exc).__name__}"


async def load(targets: list[tuple[str, Target]], texts: Texts, rate: float, duration: float) -> None:
    """Open loop: text i to each target at i / rate (+ its offset within the period)."""
    band = in_band(texts.scores)
    in_flight: set[asyncio.Task] = set()

    async def one(session: aiohttp.ClientSession, url: str, target: Target, index: int, due: float) -> None:
        answer = await post(session, url, chat(texts.texts[index]))
        elapsed = time.monotonic() - due
        target.answers[answer] += 1
        target.latencies_s.append(elapsed)
        if answer == "200":
            target.allowed_s.append(elapsed)
        if band[index]:
            target.escalated_s.append(elapsed)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.monotonic() + 0.5
        for request in range(int(rate * duration)):
            for offset, (url, target) in enumerate(targets):
                due = start + (request + offset / len(targets)) / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.create_task(one(session, url, target, request % len(texts.texts), due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)


async def warm_up(urls: list[str], texts: Texts) -> None:
    """Connections, the classifier's first batches, the guard's first calls: before anything is measured."""
    async with aiohttp.ClientSession() as session:
        for url in urls:
            for index in range(WARMUP_REQUESTS):
                await post(session, url, chat(texts.texts[-1 - index]))


def escalations_counted(url: str) -> int:
    _, text = http("GET", url + "/metrics")
    return int(sum(float(value) for value in re.findall(
        r'^wardgate_guard_escalations_total\{[^}]*direction="input"[^}]*\} ([0-9.e+]+)$', text, re.MULTILINE)))


def latency(texts: Texts, args: argparse.Namespace, workdir: Path) -> tuple[Target, Target, int]:
    upstream = FakeUpstream().start()
    guard = FakeGuard().start()
    guard.behaviour, guard.delay_s = "slow", args.guard_ms / 1000
    peer, cascade = Target("classifier alone"), Target("cascade")
    try:
        env = {**os.environ, "WARDGATE_STATE_DIR": str(workdir / "state")}
        common = ["--upstream", upstream.url, "--audit-dsn", "none", "--log-level", "warning"]
        progress("starting the two gateways")
        with wardgate_serving([*common, "--policy", str(policy_file(workdir, "peer", None))],
                              workdir / "peer.log", STARTUP_TIMEOUT_S, env) as peer_url, \
                wardgate_serving([*common, "--policy", str(policy_file(workdir, "cascade", guard.url))],
                                 workdir / "cascade.log", STARTUP_TIMEOUT_S, env) as cascade_url:
            progress(f"load: {args.rate:g} requests/s to each for {args.duration:g} s")
            asyncio.run(warm_up([peer_url, cascade_url], texts))
            before = escalations_counted(cascade_url)
            asyncio.run(load([(peer_url, peer), (cascade_url, cascade)], texts, args.rate, args.duration))
            counted = escalations_counted(cascade_url) - before
    finally:
        guard.stop()
        upstream.stop()
    return peer, cascade, counted


# ---------------------------------------------------------------------------------------------
# Report


def report(texts: Texts, args: argparse.Namespace, measured: tuple[Target, Target, int] | None) -> None:
    band = in_band(texts.scores)
    langs = np.array(texts.langs)
    print(f"texts: {len(texts.texts)} prompts of the validation split (en {int((langs == 'en').sum())}, "
          f"zh {int((langs == 'zh').sum())}; unsafe {int(texts.unsafe.sum())})")
    print(f"escalation_share: {100 * band.mean():.1f}% of texts have a classifier unsafe score in "
          f"[{BAND[0]}, {BAND[1]}] (en {100 * band[langs == 'en'].mean():.1f}%, "
          f"zh {100 * band[langs == 'zh'].mean():.1f}%)")
    if measured is not None:
        peer, cascade, counted = measured
        print(f"latency: {args.rate:g} requests/s to each gateway for {args.duration:g} s, the guard answers after "
              f"{args.guard_ms:g} ms")
        for target in (peer, cascade):
            answers = ", ".join(f"{name} {count}" for name, count in sorted(target.answers.items()))
            print(f"  {target.name}: {len(target.latencies_s)} requests ({answers})")
            errors = sum(count for name, count in target.answers.items() if name not in ("200", "blocked"))
            if errors:
                print(f"WARNING: {target.name} had {errors} errors; its figures are not valid")
        sent = len(cascade.latencies_s)
        print(f"  escalated by the cascade gateway: {counted} of {sent} requests "
              f"({100 * counted / max(1, sent):.1f}%, wardgate_guard_escalations_total; "
              f"{len(cascade.escalated_s)} by the scores of part 1)")
        print(f"  {'':<28} {'classifier alone':>17} {'cascade':>9} {'added':>8}")
        for label, attribute in (("allowed (200) requests", "allowed_s"), ("texts in the band", "escalated_s"),
                                 ("all requests", "latencies_s")):
            for q in (0.5, 0.99):
                alone = percentile(getattr(peer, attribute), q) * 1000
                both = percentile(getattr(cascade, attribute), q) * 1000
                print(f"  {label + f' p{round(q * 100)}':<28} {alone:>14.1f} ms {both:>6.1f} ms "
                      f"{both - alone:>5.1f} ms")
        print("  (a blocked request is answered no sooner than refusal_floor_ms, 100 ms, after it arrived: 'all "
              "requests' mixes them in, and its p50 moves with the share of slow answers)")
    print(f"quality: the guard is SIMULATED (its answer is the true label, flipped on the stated share of texts, "
          f"mean of {args.draws} draws); no guard model was run")
    print(f"  {'decision':<66} {'recall':>7} {'false-block':>12} {'F1':>6} {'to guard':>9}")
    for name, (recall, false_block, f1), sent in quality(texts, args.guard_errors, args.draws):
        print(f"  {name:<66} {recall:>7.3f} {false_block:>12.3f} {f1:>6.3f} {100 * sent:>8.1f}%")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=3000, help="prompts from the validation split, half en, half zh")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second to each gateway")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--guard-ms", type=float, default=50.0, help="the fake guard's answer time")
    parser.add_argument("--guard-errors", type=float, nargs="+", default=[0.05, 0.15],
                        help="the simulated guard's error rates (shares of texts it gets wrong)")
    parser.add_argument("--draws", type=int, default=20, help="simulated guards per error rate, averaged")
    parser.add_argument("--no-latency", action="store_true", help="parts 1 and 3 only (no gateway)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        texts = pick_texts(args.texts)
        measured = None
        if not args.no_latency:
            with tempfile.TemporaryDirectory(prefix="wardgate-cascade-") as workdir:
                measured = latency(texts, args, Path(workdir))
    except BenchFailed as exc:
        print(f"bench/cascade.py: {exc}", file=sys.stderr)
        return 1
    report(texts, args, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
