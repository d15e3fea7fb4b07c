#!/usr/bin/env python3
"""The risk classifier's speed: direct scoring, micro-batching and through the gateway, against
alt-profanity-check (the cheap linear peer), all on the same texts and in one run.

Texts: short real prompts from our own validation split (``classifiers.data.load_examples`` +
``split``; never trained on), under 200 characters, half English and half Chinese, chosen by a hash
of the text (deterministic, independent of the data's order): ``--texts`` of them (default 512).
About half are unsafe, as in the split. Their mean length in tokens is printed (the model's view:
[CLS] and [SEP] included).

Parts:

1. **Direct scoring** - ``RiskClassifier.score(batch)`` in this process, at batch 1, 8 and 32,
   ``int8`` (ONNX Runtime, int8 MatMuls; the default) and ``fp32`` (``quantize="none"``): texts/s (the
   median over rounds of texts / time spent in calls) and per-call p50 / p99 latency. The peer,
   ``profanity_check.predict_prob(batch)`` (alt-profanity-check: TF-IDF + a linear SVM trained on
   English profanity; it says nothing useful about Chinese, its speed is what is compared), at batch
   1 and 32 on the same texts; then ratios ours / peer and int8 / fp32. Targets are interleaved
   within each round, so that other work on the machine moves them alike.
2. **Batch vs one by one** - the max absolute score difference between a batch of 32 and the same
   32 texts scored one at a time, for int8 and fp32: 0 for both (one window per forward pass, so a
   text's company cannot change its activations' quantisation scale).
3. **Micro-batching** - 64 concurrent asyncio callers, each scoring texts in a loop with
   ``await MicroBatcher(classifier, max_batch=32, max_wait_ms=0).score(text)`` (the gateway's
   settings): texts/s, per-call p50 / p99 latency and the mean batch the batcher formed, int8 and
   fp32. The first second(s) are warm-up, not measured.
4. **Through the gateway** - ``wardgate serve`` in front of a static OpenAI-compatible stub (an
   aiohttp server in a child process, this file run with a hidden option), once with
   ``--policy none`` and once with a policy whose only input stage is
   ``{type: classifier, model: DIR, block: {unsafe: 0.5}}`` (int8). An open-loop load of ``--rate``
   requests/s (default 100; a fixed schedule, request i is sent at i / rate whatever the answers do)
   for ``--duration`` s (default 20), each request one short text as the user message. Latency runs
   from a request's scheduled send time to its whole answer (so a late sender counts against us,
   not for us). A request the classifier blocks (400 WG1001) is an answer, counted as ``blocked``;
   anything else that is not a 200 is an error and invalidates the figures. Reported: p50 / p99 for
   both, and the added latency (classifier - none).

As in bench/proxy_overhead.py, the gateway is pinned to ``--server-cpus`` (default CPU 0) and the
stub and this load generator to ``--load-cpus`` (default CPU 1): the gateway's classifier then runs
on one core (the classifier takes its thread count from the affinity). Parts 1-3 run in this
process, unpinned, with one inference thread per CPU unless ``--threads`` says otherwise.

On a busy machine, compare with ``--threads 1``: intra-op threads wait for one another at every
operation, so when another process holds one of two cores, two threads can be much slower than one.
A WARNING line says when the load average before the run shows other work.

Goals (issue 5): >= 400 short texts/s on 2 cores with int8 and micro-batching (part 3, int8);
p99 added latency <= 15 ms at 100 requests/s through the gateway (part 4).

Usage::

    .venv/bin/python bench/classifier.py                        # the shipped artifact (builtin)
    .venv/bin/python bench/classifier.py --model DIR --quick    # a quick look at another artifact

alt-profanity-check comes with the ``bench`` extra (``pip install -e '.[bench]'``); without it the
peer is reported UNAVAILABLE and the run goes on. Absolute figures hold for this machine and run
only; compare ratios between targets of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness import BenchFailed, free_port, http, percentile, progress, ratio, running, warn_invalid  # bench/
from harness import wait_ready as harness_wait_ready

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WARDGATE_BIN = REPO_ROOT / ".venv" / "bin" / "wardgate"

MAX_CHARS = 200
BATCH_SIZES = (1, 8, 32)
PEER_BATCH_SIZES = (1, 32)
PRECISIONS = {"int8": "int8", "fp32": "none"}  # name in the report -> quantize
PEER = "profanity_check"
CONSISTENCY_BATCH = 32
CALLERS = 64
MICRO_MAX_BATCH = 32
MICRO_MAX_WAIT_MS = 0.0
READY_TIMEOUT_S = 180.0  # the gateway loads the model at startup; slow on a busy machine
REQUEST_TIMEOUT_S = 10.0
LATE_SEND_MS = 5.0  # a load generator this late on its schedule is not keeping the rate
BUSY_LOAD = 1.0  # a 1-min load average above this before the run: something else is running

GOAL_TEXTS_PER_S = 400
GOAL_P99_ADDED_MS = 15.0
GOAL_RATE = 100

CHAT_PATH = "/v1/chat/completions"
UPSTREAM_WORKER = "--upstream-worker"  # hidden: this file run as the stub upstream
STUB_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "demo",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}, separators=(",", ":")).encode()

POLICY_TEMPLATE = """\
version: "bench-classifier"
description: bench/classifier.py - the risk classifier alone on input.
input:
  stages:
    - {type: classifier, model: MODEL, block: {unsafe: 0.5}}
"""


# ---------------------------------------------------------------------------------------------
# Texts


@dataclass(frozen=True)
class Texts:
    texts: list[str]
    langs: list[str]
    unsafe: int


def pick_texts(count: int) -> Texts:
    from classifiers.data import load_examples, split

    _, valid = split(load_examples())
    pools: dict[str, list] = {"en": [], "zh": []}
    for example in valid:
        if example.role == "prompt" and len(example.text) < MAX_CHARS and example.lang in pools:
            pools[example.lang].append(example)
    chosen = []
    for lang, pool in pools.items():
        pool.sort(key=lambda e: hashlib.sha256(e.text.encode()).digest())
        want = count // 2 if lang == "en" else count - count // 2
        if len(pool) < want:
            raise BenchFailed(f"only {len(pool)} short {lang} prompts in the validation split, {want} wanted")
        chosen.append(pool[:want])
    # Interleaved, so that every batch mixes both languages.
    examples = [e for pair in zip(*chosen, strict=False) for e in pair] + chosen[1][len(chosen[0]):]
    return Texts([e.text for e in examples], [e.lang for e in examples], sum(e.unsafe for e in examples))


# ---------------------------------------------------------------------------------------------
# Statistics




@dataclass
class Point:
    """Direct scoring at one batch size: per-call latencies (s) and texts/s per round."""

    calls: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    @property
    def texts_per_s(self) -> float:
        return statistics.median(self.rates) if self.rates else math.nan


# ---------------------------------------------------------------------------------------------
# Part 1 and 2: direct scoring, batch vs one by one

# A target: given a batch of texts, score it.
Scorer = Callable[[list[str]], object]


def load_classifiers(model_dir: Path, threads: int | None) -> dict[str, object]:
    from classifiers.runtime import RiskClassifier

    loaded = {}
    for name, quantize in PRECISIONS.items():
        progress(f"loading {model_dir} ({name})")
        loaded[name] = RiskClassifier.load(model_dir, quantize, threads)
    return loaded


def peer_scorer() -> Scorer | str:
    """alt-profanity-check's batch scorer, or why there is none."""
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        return f"alt-profanity-check not installed (pip install -e '.[bench]'): {exc}"
    return predict_prob


def measure_direct(scorers: dict[str, Scorer], texts: list[str], rounds: int) -> dict[str, dict[int, Point]]:
    results: dict[str, dict[int, Point]] = {name: {} for name in scorers}
    for scorer in scorers.values():  # first calls are slow (allocations, lazy init): not measured
        for size in BATCH_SIZES:
            scorer(texts[:size])
    for round_index in range(rounds):
        for size in BATCH_SIZES:
            progress(f"direct scoring: round {round_index + 1}/{rounds}, batch {size}")
            batches = [texts[start:start + size] for start in range(0, len(texts) - size + 1, size)]
            for name, scorer in scorers.items():
                if name == PEER and size not in PEER_BATCH_SIZES:
                    continue
                point = results[name].setdefault(size, Point())
                spent = 0.0
                for batch in batches:
                    started = time.perf_counter()
                    scorer(batch)
                    elapsed = time.perf_counter() - started
                    point.calls.append(elapsed)
                    spent += elapsed
                point.rates.append(len(batches) * size / spent)
    return results


def consistency(classifier, texts: list[str]) -> float:
    import numpy as np

    batch = texts[:CONSISTENCY_BATCH]
    together = classifier.score(batch)
    alone = np.vstack([classifier.score([text]) for text in batch])
    return float(np.max(np.abs(together - alone)))


def mean_tokens(classifier, texts: list[str]) -> float:
    return statistics.fmean(sum(len(window) for window in classifier.windows(text)) for text in texts)


# ---------------------------------------------------------------------------------------------
# Part 3: micro-batching


class CountingClassifier:
    """What MicroBatcher calls, recording the size (in windows: one per short text) of every batch it scores."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self.batches: list[int] = []

    def windows(self, text: str) -> list[list[int]]:
        return self.classifier.windows(text)

    def window_logits(self, windows: list[list[int]]):
        self.batches.append(len(windows))
        return self.classifier.window_logits(windows)

    def calibrated(self, logits):
        return self.classifier.calibrated(logits)


@dataclass(frozen=True)
class MicroPoint:
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    calls: int


async def micro_batch(classifier, texts: list[str], warmup_s: float, duration_s: float) -> MicroPoint:
    from classifiers.runtime import MicroBatcher

    counting = CountingClassifier(classifier)
    batcher = MicroBatcher(counting, max_batch=MICRO_MAX_BATCH, max_wait_ms=MICRO_MAX_WAIT_MS)
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup_s
    window_end = window_start + duration_s
    latencies: list[float] = []
    done_in_window = 0
    batches_before: int | None = None

    async def caller(index: int) -> None:
        nonlocal done_in_window
        position = index * len(texts) // CALLERS  # callers start at different texts
        while loop.time() < window_end:
            started = loop.time()
            await batcher.score(texts[position % len(texts)])
            finished = loop.time()
            position += 1
            if window_start <= finished <= window_end:
                done_in_window += 1
                if started >= window_start:
                    latencies.append(finished - started)

    async def mark_window() -> None:
        nonlocal batches_before
        await asyncio.sleep(warmup_s)
        batches_before = len(counting.batches)

    await asyncio.gather(mark_window(), *(caller(i) for i in range(CALLERS)))
    formed = counting.batches[batches_before or 0:]
    return MicroPoint(
        texts_per_s=done_in_window / duration_s,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_batch=statistics.fmean(formed) if formed else math.nan,
        calls=len(latencies),
    )


# ---------------------------------------------------------------------------------------------
# Part 4: through the gateway


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    harness_wait_ready(proc, lambda: http("GET", url, timeout_s=REQUEST_TIMEOUT_S)[0] == 200, log, READY_TIMEOUT_S,
                       BenchFailed)


def chat_body(text: str) -> bytes:
    return json.dumps({"model": "demo", "messages": [{"role": "user", "content": text}]},
                      ensure_ascii=False, separators=(",", ":")).encode()


def answered(status: int, body: str) -> str | None:
    """"ok", "blocked" (the classifier's own refusal), or None for anything else."""
    if status == 200 and '"choices"' in body:
        return "ok"
    if status == 400 and "WG1001" in body:
        return "blocked"
    return None


@contextmanager
def stub_upstream(workdir: Path, cpus: frozenset[int]) -> Iterator[str]:
    port = free_port()
    log = workdir / "upstream.log"
    with running([sys.executable, __file__, UPSTREAM_WORKER, str(port)], log, cpus) as proc:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(proc, base_url + "/v1/models", log)
        yield base_url


def upstream_worker(port: int) -> int:
    """The fake upstream: a static chat.completion, a few microseconds a request."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=STUB_BODY, content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "demo", "object": "model"}]})

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    return 0


@contextmanager
def gateway(name: str, policy: str, upstream_url: str, workdir: Path, cpus: frozenset[int]) -> Iterator[str]:
    if not WARDGATE_BIN.exists():
        raise BenchFailed(f"{WARDGATE_BIN} not installed")
    port = free_port()
    cmd = [str(WARDGATE_BIN), "serve", "--upstream", upstream_url, "--policy", policy, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    # Policy history and other state in the run's temp dir, not the user's.
    env = {**os.environ, "WARDGATE_STATE_DIR": str(workdir / f"state-{name}")}
    log = workdir / f"gateway-{name}.log"
    with running(cmd, log, cpus, env=env, cwd=workdir) as proc:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(proc, base_url + "/healthz", log)
        status, body = http("POST", base_url + CHAT_PATH, chat_body("Hello, how are you?"))
        if answered(status, body) is None:
            raise BenchFailed(f"{name}: a chat request returned {status}: {body[:300]}")
        yield base_url


@dataclass(frozen=True)
class LoadPoint:
    rate: float  # achieved: answers / duration
    p50_ms: float
    p99_ms: float
    requests: int
    blocked: int
    errors: int
    late_sends: int  # sent more than LATE_SEND_MS after their scheduled time
    send_lag_p99_ms: float


async def open_loop(url: str, bodies: list[bytes], rate: float, duration_s: float, warmup_s: float) -> LoadPoint:
    """Request i is sent at start + i / rate; the first warmup_s seconds are not measured."""
    import aiohttp

    latencies: list[float] = []
    lags: list[float] = []
    outcomes = {"ok": 0, "blocked": 0, "error": 0}
    total = int((warmup_s + duration_s) * rate)
    measured_from = int(warmup_s * rate)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        loop = asyncio.get_running_loop()

        async def send(index: int, scheduled: float) -> None:
            lag = loop.time() - scheduled
            try:
                async with session.post(url, data=bodies[index % len(bodies)], headers=headers) as response:
                    body = await response.text()
                    outcome = answered(response.status, body) or "error"
            except (aiohttp.ClientError, TimeoutError):
                outcome = "error"
            if index >= measured_from:
                outcomes[outcome] += 1
                lags.append(lag)
                if outcome != "error":
                    latencies.append(loop.time() - scheduled)

        start = loop.time() + 0.05
        tasks = []
        for index in range(total):
            scheduled = start + index / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(index, scheduled)))
        await asyncio.gather(*tasks)
    answers = outcomes["ok"] + outcomes["blocked"]
    return LoadPoint(
        rate=answers / duration_s,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        requests=total - measured_from,
        blocked=outcomes["blocked"],
        errors=outcomes["error"],
        late_sends=sum(lag * 1000 > LATE_SEND_MS for lag in lags),
        send_lag_p99_ms=percentile(lags, 0.99) * 1000,
    )


def measure_gateway(args: argparse.Namespace, model: str, texts: list[str], workdir: Path) -> dict[str, LoadPoint]:
    policy_file = workdir / "classifier.yaml"
    policy_file.write_text(POLICY_TEMPLATE.replace("MODEL", json.dumps(model)), encoding="utf-8")
    bodies = [chat_body(text) for text in texts]
    results: dict[str, LoadPoint] = {}
    # The load generator (this thread: the event loop) on the load CPUs too, as wrk is in proxy_overhead.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, args.load_cpus)
    try:
        with stub_upstream(workdir, args.load_cpus) as upstream_url:
            for name, policy in (("none", "none"), ("classifier", str(policy_file))):
                progress(f"gateway ({name}): starting")
                with gateway(name, policy, upstream_url, workdir, args.server_cpus) as base_url:
                    progress(f"gateway ({name}): {args.rate:g} requests/s for {args.warmup:g} + "
                             f"{args.duration:g} s")
                    results[name] = asyncio.run(open_loop(base_url + CHAT_PATH, bodies, args.rate, args.duration,
                                                          args.warmup))
    finally:
        os.sched_setaffinity(0, affinity)
    return results


# ---------------------------------------------------------------------------------------------
# Report


def direct_lines(direct: dict[str, dict[int, Point]]) -> list[str]:
    lines = []
    for name, points in direct.items():
        for size, point in points.items():
            lines += [
                f"{name}.b{size}.texts_per_s: {point.texts_per_s:.0f} texts/s",
                f"{name}.b{size}.p50: {percentile(point.calls, 0.50) * 1000:.3f} ms",
                f"{name}.b{size}.p99: {percentile(point.calls, 0.99) * 1000:.3f} ms",
            ]
    for size in BATCH_SIZES:
        if size in direct.get("int8", {}) and size in direct.get("fp32", {}):
            speedup = ratio(direct["int8"][size].texts_per_s, direct["fp32"][size].texts_per_s)
            lines.append(f"int8/fp32.b{size}.texts_per_s: {speedup:.3g}")
    for name in PRECISIONS:
        for size in PEER_BATCH_SIZES:
            if size in direct.get(name, {}) and size in direct.get(PEER, {}):
                versus = ratio(direct[name][size].texts_per_s, direct[PEER][size].texts_per_s)
                lines.append(f"{name}/{PEER}.b{size}.texts_per_s: {versus:.3g}")
    return lines


def table(direct: dict[str, dict[int, Point]], micro: dict[str, MicroPoint]) -> str:
    header = f"{'target':<18}{'batch':>8}{'texts/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
    rows = [header, "-" * len(header)]
    for name, points in direct.items():
        for size, point in points.items():
            rows.append(f"{name:<18}{size:>8}{point.texts_per_s:>10.0f}{percentile(point.calls, 0.5) * 1000:>10.3f}"
                        f"{percentile(point.calls, 0.99) * 1000:>10.3f}")
    for name, point in micro.items():
        rows.append(f"{'micro.' + name:<18}{f'~{point.mean_batch:.1f}':>8}{point.texts_per_s:>10.0f}"
                    f"{point.p50_ms:>10.3f}{point.p99_ms:>10.3f}")
    return "\n".join(rows) + f"\n(micro = {CALLERS} callers through MicroBatcher; its batch column is the mean batch)"


def report(args: argparse.Namespace, model_dir: Path, texts: Texts, tokens: float, threads: int, load_before: float,
           direct: dict[str, dict[int, Point]], diffs: dict[str, float], micro: dict[str, MicroPoint],
           load: dict[str, LoadPoint], unavailable: dict[str, str]) -> None:
    en = texts.langs.count("en")
    print(f"# model {model_dir}; {os.cpu_count()} CPUs; inference threads in this process: {threads}")
    print(f"# gateway CPUs {sorted(args.server_cpus)}, stub upstream + load generator CPUs {sorted(args.load_cpus)}")
    # Anything else running on the cores skews every figure; this shows whether something did.
    print(f"# load average (1 min) before the run: {load_before:.2f}, at its end: {os.getloadavg()[0]:.2f}")
    if load_before > BUSY_LOAD:
        print(f"WARNING: load average {load_before:.2f} before the run: other work shared the CPUs; the figures "
              "are not representative (compare --threads 1)")
    print(f"texts: {len(texts.texts)} ({en} en, {len(texts.texts) - en} zh; {texts.unsafe} unsafe), "
          f"under {MAX_CHARS} chars, from the validation split")
    print(f"texts.mean_tokens: {tokens:.1f} tokens")
    print(f"texts.mean_chars: {statistics.fmean(len(t) for t in texts.texts):.1f} chars")
    for line in direct_lines(direct):
        print(line)
    for name, diff in diffs.items():
        print(f"{name}.batch{CONSISTENCY_BATCH}_vs_single.max_abs_diff: {diff:.3g}")
    for name, point in micro.items():
        prefix = f"micro.{name}.c{CALLERS}"
        print(f"{prefix}.texts_per_s: {point.texts_per_s:.0f} texts/s")
        print(f"{prefix}.p50: {point.p50_ms:.3f} ms")
        print(f"{prefix}.p99: {point.p99_ms:.3f} ms")
        print(f"{prefix}.mean_batch: {point.mean_batch:.2f} texts")
    for name, point in load.items():
        prefix = f"gateway.{name}.r{args.rate:g}"
        print(f"{prefix}.p50: {point.p50_ms:.3f} ms")
        print(f"{prefix}.p99: {point.p99_ms:.3f} ms")
        print(f"{prefix}.answered_rate: {point.rate:.1f} req/s")
        print(f"{prefix}.requests: {point.requests} (blocked {point.blocked}, errors {point.errors})")
        if point.late_sends:
            print(f"WARNING: gateway.{name}: {point.late_sends} requests sent > {LATE_SEND_MS:g} ms late "
                  f"(p99 lag {point.send_lag_p99_ms:.1f} ms): the load generator did not keep the schedule")
    added_p99 = math.nan
    if "none" in load and "classifier" in load:
        added_p99 = load["classifier"].p99_ms - load["none"].p99_ms
        print(f"gateway.r{args.rate:g}.p50_added: {load['classifier'].p50_ms - load['none'].p50_ms:.3f} ms")
        print(f"gateway.r{args.rate:g}.p99_added: {added_p99:.3f} ms")
    for name, reason in unavailable.items():
        print(f"{name}: UNAVAILABLE - " + reason.replace("\n", "\n    "))
    warn_invalid({f"gateway.{name}": {0: point} for name, point in load.items()}, "failed requests")
    print()
    print(table(direct, micro))
    print()
    if "int8" in micro:
        rate = micro["int8"].texts_per_s
        met = rate >= GOAL_TEXTS_PER_S
        print(f"goal >= {GOAL_TEXTS_PER_S} short texts/s (int8, micro-batching, inference threads: {threads}): "
              f"{'met' if met else 'NOT met'} ({rate:.0f} texts/s)")
    if not math.isnan(added_p99):
        valid = all(point.errors == 0 for point in load.values())
        met = added_p99 <= GOAL_P99_ADDED_MS and valid and args.rate >= GOAL_RATE
        note = "" if args.rate >= GOAL_RATE else f", measured at {args.rate:g} requests/s only"
        note += "" if valid else ", with failed requests"
        print(f"goal p99 added latency <= {GOAL_P99_ADDED_MS:g} ms at {GOAL_RATE} requests/s through the gateway: "
              f"{'met' if met else 'NOT met'} ({added_p99:.1f} ms{note})")


# ---------------------------------------------------------------------------------------------
# Main


def cpu_set(text: str) -> frozenset[int]:
    cpus = frozenset(int(part) for part in text.split(","))
    missing = cpus - os.sched_getaffinity(0)
    if missing:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(missing)} not available")
    return cpus


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The risk classifier's speed, direct, micro-batched and through "
                                     "the gateway, against alt-profanity-check (see module docstring).")
    parser.add_argument("--model", default="builtin",
                        help="`builtin` (the shipped artifact, the default) or a classifier artifact directory")
    parser.add_argument("--quick", action="store_true",
                        help="one round of direct scoring, 3 s of micro-batching and 5 s per gateway policy")
    parser.add_argument("--texts", type=int, default=512, help="short validation texts to use (default 512)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of direct scoring (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads for direct scoring and micro-batching (default: one per CPU)")
    parser.add_argument("--rate", type=float, default=GOAL_RATE,
                        help=f"gateway requests/s, open loop (default {GOAL_RATE})")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per gateway policy (default 20; --quick 5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds of load before each (default 3; --quick 2)")
    parser.add_argument("--no-gateway", action="store_true", help="leave out part 4 (the gateway)")
    parser.add_argument("--server-cpus", type=cpu_set, default="0", help="CPUs for the gateway (default 0)")
    parser.add_argument("--load-cpus", type=cpu_set, default="1",
                        help="CPUs for the stub upstream and the load generator (default 1)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with policy and server logs")
    args = parser.parse_args(argv)
    if args.texts < max(BATCH_SIZES) or args.texts < CONSISTENCY_BATCH:
        parser.error(f"--texts must be at least {max(BATCH_SIZES)}")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0)
    args.micro_duration = 3.0 if args.quick else 10.0
    args.micro_warmup = 1.0 if args.quick else 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [UPSTREAM_WORKER]:  # the stub upstream's child process (see stub_upstream)
        return upstream_worker(int(argv[1]))
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from classifiers.model import ClassifierError
    from classifiers.registry import resolve

    try:
        model_dir = resolve(args.model)
    except ClassifierError as exc:
        print(f"error: {exc} (pass --model DIR: a classifier artifact directory)", file=sys.stderr)
        return 2
    # SIGTERM takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-classifier-bench-"))
    unavailable: dict[str, str] = {}
    load: dict[str, LoadPoint] = {}
    try:
        progress("picking texts from the validation split")
        texts = pick_texts(args.texts)
        classifiers = load_classifiers(model_dir, args.threads)
        tokens = mean_tokens(classifiers["int8"], texts.texts)
        scorers: dict[str, Scorer] = {name: c.score for name, c in classifiers.items()}
        peer = peer_scorer()
        if isinstance(peer, str):
            unavailable[PEER] = peer
        else:
            scorers[PEER] = peer
        direct = measure_direct(scorers, texts.texts, args.rounds)
        progress("batch vs one by one")
        diffs = {name: consistency(c, texts.texts) for name, c in classifiers.items()}
        micro = {}
        for name, classifier in classifiers.items():
            progress(f"micro-batching ({name}): {CALLERS} callers, {args.micro_warmup:g} + {args.micro_duration:g} s")
            micro[name] = asyncio.run(micro_batch(classifier, texts.texts, args.micro_warmup, args.micro_duration))
        threads = args.threads or len(os.sched_getaffinity(0))
        del classifiers, scorers  # the gateway loads its own
        if args.no_gateway:
            unavailable["gateway"] = "left out (--no-gateway)"
        else:
            model = args.model if args.model == "builtin" else str(model_dir.resolve())
            try:
                load = measure_gateway(args, model, texts.texts, workdir)
            except BenchFailed as exc:
                unavailable["gateway"] = str(exc)
                progress(f"gateway: UNAVAILABLE - {exc}")
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except BenchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_workdir:
            print(f"# workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(args, model_dir, texts, tokens, threads, load_before, direct, diffs, micro, load, unavailable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
