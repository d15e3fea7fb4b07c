#!/usr/bin/env python3
"""Throughput and time to first token of the bundled model server, int8 vs fp32, batched vs not.

Four configurations of ``wardgate model-server``, each a fresh server on a free port:

* ``int8.batched``    - the defaults (dynamic int8 on CPU, ``--max-batch-size 16``);
* ``int8.unbatched``  - ``--max-batch-size 1``: one sequence per forward pass;
* ``fp32.batched``    - ``--quantize none``;
* ``fp32.unbatched``  - ``--quantize none --max-batch-size 1``.

At each concurrency (default 1, 8, 32) that many async clients stream ``POST /v1/chat/completions``
back to back (``temperature 0``, ``max_tokens 64``, prompts varied in English and Chinese). The
measured window opens once every client has finished one request, so the server's queue is in its
steady state (at c32 unbatched a request waits behind 31 others), and lasts ``--duration`` seconds.
Per point:

* ``tokens_per_s`` - the delta of the server's ``wardgate_model_generated_tokens_total`` over the
  window divided by its length: exact, whatever SSE chunking does (a chunk may carry several
  tokens, or none while text is held back);
* ``ttft_p50`` / ``ttft_p99`` - from sending a request to its first non-empty content delta, over
  the requests sent inside the window (those still running when it closes are awaited);
* ``mean_batch`` - the delta of ``wardgate_model_batch_size`` sum / count: sequences per
  observation (per batch or per forward pass, whichever the server's engine observes);
* ``tokens_per_pass`` - generated tokens / forward passes: the batch size that produced tokens.

Then ``<precision>.batching_speedup.c<N>`` (batched / unbatched tokens/s) and
``int8_vs_fp32.<mode>.c<N>`` (int8 / fp32 tokens/s), all from the same run, and a table.

Usage::

    .venv/bin/python bench/model_server.py                      # all four, 10 s a point
    .venv/bin/python bench/model_server.py --duration 5 --configs int8.batched,int8.unbatched
    .venv/bin/python bench/model_server.py --model /models/my-llama --concurrency 1,4

How to read the figures
-----------------------
* Everything shares 2 CPU cores: the server's event loop, its torch threads and the clients
  (whose SSE parsing costs CPU too). Nothing is pinned. Absolute figures hold for this machine and
  run only; the ratios, measured minutes apart on the same box, are what to compare.
* The demo model (``init-demo``) has random weights: its text is meaningless and may end early on
  an end-of-sequence token, so requests carry fewer than ``max_tokens`` tokens at times. That is
  why tokens come from the server's counter, not from ``requests x max_tokens``.
* CPU only: int8 here is PyTorch's dynamic quantization, whose gain over fp32 depends on the
  matrix sizes (the demo model's are tiny, and activations are quantized per call); a real
  model's ratio differs.
* At c1 there is nothing to batch: batched and unbatched tokens/s should match (speed-up ~1).
  Batched c1 TTFT is a few ms higher by design: an idle batched engine waits ``--max-wait-ms``
  (5 ms) for company before its prefill. At c8/c32 TTFT is mostly queueing: with
  ``--max-batch-size 16`` half of 32 clients wait for a running batch to make room.
* Any point with failed requests (non-200, error events, broken streams, no answer within
  ``--request-timeout``) is flagged; its figures are not valid. Warnings and errors in the
  server's log are printed as ``#`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness import free_port, http_ok, percentile, progress, ratio, running, warn_invalid  # bench/harness.py
from harness import wait_ready as harness_wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
WARDGATE_BIN = REPO_ROOT / ".venv" / "bin" / "wardgate"

PRECISIONS = {"int8": "int8", "fp32": "none"}  # name in the report -> --quantize
MODES = {"batched": (), "unbatched": ("--max-batch-size", "1")}  # name -> extra server options
ALL_CONFIGS = tuple(f"{precision}.{mode}" for precision in PRECISIONS for mode in MODES)

READY_TIMEOUT_S = 120.0
# Distinct lengths and scripts, so batches mix padding and the byte-level tokenizer sees Chinese.
PROMPTS = (
    "Hello, how are you today?",
    "Summarise the plot of Hamlet in two sentences.",
    "Write a haiku about the sea at night.",
    "What is the capital of Australia, and why was it chosen?",
    "Explain what a reverse proxy does to a five-year-old.",
    "List three uses of a paper clip.",
    "Translate 'good morning, my friend' into French and German.",
    "Give me a recipe for a quick weekday dinner with rice, eggs and spinach.",
    "你好，今天天气怎么样？",
    "请用两句话介绍一下长城的历史。",
    "写一首关于秋天的短诗。",
    "机器学习和深度学习有什么区别？请简单解释。",
    "推荐三本适合初学者的编程书。",
    "为什么天空是蓝色的？",
    "Mix both: 请解释 what an API gateway is, in English and 中文.",
    "Count from one to ten in Chinese: 一、二、三……",
)


class ServerFailed(Exception):
    """A configuration's server did not start or did not answer correctly."""


@dataclass(frozen=True)
class ServerConfig:
    name: str
    quantize: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Counters:
    tokens: float
    forward_passes: float
    batch_sum: float
    batch_count: float


@dataclass(frozen=True)
class Point:
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    mean_batch: float
    tokens_per_pass: float
    requests: int
    errors: int


@dataclass
class LoadRun:
    """State shared by one point's clients; single event loop, so no locking."""

    concurrency: int
    max_tokens: int
    started: asyncio.Event = field(default_factory=asyncio.Event)
    window_start: float | None = None
    stopped: bool = False
    first_done: int = 0
    ttfts: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0

    def record(self, sent: float, ttft: float | None, ok: bool) -> None:
        if self.window_start is not None and sent >= self.window_start:
            self.requests += 1
            self.errors += not ok
            # A request whose first token was end-of-sequence has no content delta, hence no TTFT.
            if ttft is not None:
                self.ttfts.append(ttft)


Results = dict[str, dict[int, Point]]


# -- processes -------------------------------------------------------------------------------------


def make_demo_model(directory: Path) -> Path:
    done = subprocess.run([str(WARDGATE_BIN), "model-server", "init-demo", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerFailed(f"init-demo failed ({done.returncode}): {done.stderr.strip()}")
    return directory



@contextmanager
def model_server(config: ServerConfig, model_dir: Path, log: Path) -> Iterator[str]:
    """Run one configuration's server for the duration of the block; yield its base URL."""
    port = free_port()
    cmd = [str(WARDGATE_BIN), "model-server", "--model", str(model_dir), "--port", str(port),
           "--quantize", config.quantize, *config.options]
    with running(cmd, log) as proc:
        base_url = f"http://127.0.0.1:{port}"
        harness_wait_ready(proc, lambda: http_ok(base_url + "/readyz"), log, READY_TIMEOUT_S, ServerFailed)
        yield base_url


def log_problems(log: Path) -> list[str]:
    """Distinct warning/error events in the server's JSON log, with how often each occurred."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # progress bars and other non-JSON output of model loading
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
            key = f"{entry['level']}: {entry.get('event')}"
            counts[key] = counts.get(key, 0) + 1
    return [f"{key} (x{count})" for key, count in counts.items()]


def source_revision() -> str:
    """The commit measured, and whether the working tree differed from it (results depend on it)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "gateway"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev} (gateway/ modified)" if dirty else rev


# -- load ------------------------------------------------------------------------------------------


def request_body(prompt: str, max_tokens: int) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}


def has_content(line: bytes) -> bool:
    try:
        choices = json.loads(line[len(b"data: "):])["choices"]
    except (ValueError, KeyError):
        return False
    return bool(choices and choices[0].get("delta", {}).get("content"))


async def stream_one(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, float | None, bool]:
    """(sent at, TTFT in s or None, ok) of one streamed request."""
    sent = time.perf_counter()
    ttft = None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                await response.read()
                return sent, None, False
            async for line in response.content:
                if line.startswith(b'data: {"error"'):
                    return sent, ttft, False
                if line.startswith(b"data: [DONE]"):
                    return sent, ttft, True
                # Only the first content delta is parsed: the clients share the server's 2 cores.
                if ttft is None and line.startswith(b"data: {") and has_content(line):
                    ttft = time.perf_counter() - sent
    except (aiohttp.ClientError, TimeoutError):
        return sent, ttft, False
    return sent, ttft, False  # the stream ended without [DONE]


async def client(index: int, run: LoadRun, session: aiohttp.ClientSession, url: str) -> None:
    sent_count = 0
    while not run.stopped:
        # Offset by the client's index, so that concurrent requests carry different prompts.
        prompt = PROMPTS[(index + sent_count) % len(PROMPTS)]
        sent_count += 1
        run.record(*await stream_one(session, url, request_body(prompt, run.max_tokens)))
        if sent_count == 1:
            run.first_done += 1
            if run.first_done == run.concurrency:
                run.started.set()


async def scrape(session: aiohttp.ClientSession, base_url: str) -> Counters:
    async with session.get(base_url + "/metrics") as response:
        text = await response.text()
    values = dict(re.findall(r"^(wardgate_model_\w+) (\S+)$", text, re.MULTILINE))
    return Counters(
        tokens=float(values["wardgate_model_generated_tokens_total"]),
        forward_passes=float(values["wardgate_model_forward_passes_total"]),
        batch_sum=float(values["wardgate_model_batch_size_sum"]),
        batch_count=float(values["wardgate_model_batch_size_count"]),
    )




async def measure_point(base_url: str, concurrency: int, args: argparse.Namespace) -> Point:
    run = LoadRun(concurrency, args.max_tokens)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    # One connection per client, plus one for the metrics scrapes.
    connector = aiohttp.TCPConnector(limit=concurrency + 1)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        url = base_url + "/v1/chat/completions"
        clients = [asyncio.create_task(client(i, run, session, url)) for i in range(concurrency)]
        try:
            await run.started.wait()
            before = await scrape(session, base_url)
            run.window_start = time.perf_counter()
            await asyncio.sleep(args.duration)
            after = await scrape(session, base_url)
            elapsed = time.perf_counter() - run.window_start
            run.stopped = True
            # Requests sent in the window finish, so that slow (queued) TTFTs are not cut off.
            await asyncio.gather(*clients)
        finally:
            for task in clients:
                task.cancel()
    return Point(
        tokens_per_s=(after.tokens - before.tokens) / elapsed,
        ttft_p50_ms=percentile(run.ttfts, 0.50) * 1000,
        ttft_p99_ms=percentile(run.ttfts, 0.99) * 1000,
        mean_batch=ratio(after.batch_sum - before.batch_sum, after.batch_count - before.batch_count),
        tokens_per_pass=ratio(after.tokens - before.tokens, after.forward_passes - before.forward_passes),
        requests=run.requests,
        errors=run.errors,
    )


async def warm_up(base_url: str, args: argparse.Namespace) -> None:
    """A few sequential requests, then a concurrent burst: first calls into torch and every batch
    shape code path are slow once; none of this is measured."""
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        url = base_url + "/v1/chat/completions"
        results = [await stream_one(session, url, request_body(PROMPTS[i], args.max_tokens)) for i in range(3)]
        burst = [stream_one(session, url, request_body(prompt, args.max_tokens)) for prompt in PROMPTS]
        results += await asyncio.gather(*burst)
    failed = sum(not ok for _, _, ok in results)
    if failed:
        raise ServerFailed(f"{failed} of {len(results)} warm-up requests failed (error or no answer within "
                           f"--request-timeout {args.request_timeout:g} s)")


async def measure_config(base_url: str, args: argparse.Namespace, name: str) -> dict[int, Point]:
    await warm_up(base_url, args)
    points = {}
    for concurrency in args.concurrency:
        progress(f"{name}: c{concurrency}")
        points[concurrency] = await measure_point(base_url, concurrency, args)
    return points


# -- report ----------------------------------------------------------------------------------------


def point_lines(results: Results) -> list[str]:
    lines = []
    for name, points in results.items():
        for c, p in points.items():
            prefix = f"{name}.c{c}"
            lines += [
                f"{prefix}.tokens_per_s: {p.tokens_per_s:.0f} tok/s",
                f"{prefix}.ttft_p50: {p.ttft_p50_ms:.1f} ms",
                f"{prefix}.ttft_p99: {p.ttft_p99_ms:.1f} ms",
                f"{prefix}.mean_batch: {p.mean_batch:.2f} seqs",
                f"{prefix}.tokens_per_pass: {p.tokens_per_pass:.2f} tok",
                f"{prefix}.requests: {p.requests} req",
                f"{prefix}.errors: {p.errors} req",
            ]
    return lines


def ratio_lines(results: Results, concurrency: Sequence[int]) -> list[str]:
    def tokens_per_s(name: str, c: int) -> float | None:
        point = results.get(name, {}).get(c)
        return point.tokens_per_s if point else None

    lines = []
    for precision in PRECISIONS:
        for c in concurrency:
            batched, unbatched = tokens_per_s(f"{precision}.batched", c), tokens_per_s(f"{precision}.unbatched", c)
            if batched is not None and unbatched is not None:
                lines.append(f"{precision}.batching_speedup.c{c}: {ratio(batched, unbatched):.2f}")
    for mode in MODES:
        for c in concurrency:
            int8, fp32 = tokens_per_s(f"int8.{mode}", c), tokens_per_s(f"fp32.{mode}", c)
            if int8 is not None and fp32 is not None:
                lines.append(f"int8_vs_fp32.{mode}.c{c}: {ratio(int8, fp32):.2f}")
    return lines


def table(results: Results) -> str:
    header = (f"{'config':<16}{'conc':>5}{'tok/s':>9}{'ttft p50':>10}{'ttft p99':>10}{'batch':>7}"
              f"{'tok/pass':>9}{'reqs':>6}{'errors':>7}")
    rows = [header, "-" * len(header)]
    for name, points in results.items():
        for c, p in points.items():
            rows.append(f"{name:<16}{c:>5}{p.tokens_per_s:>9.0f}{p.ttft_p50_ms:>10.1f}{p.ttft_p99_ms:>10.1f}"
                        f"{p.mean_batch:>7.2f}{p.tokens_per_pass:>9.2f}{p.requests:>6}{p.errors:>7}")
    return "\n".join(rows) + "\n(ttft in ms; batch = mean sequences per batch_size observation)"


def report(results: Results, notes: list[str], args: argparse.Namespace, revision: str, load_before: float) -> None:
    print(f"# {args.duration:g} s per point, max_tokens {args.max_tokens}, concurrency "
          f"{','.join(map(str, args.concurrency))}, model {args.model or 'demo (random weights)'}")
    print(f"# wardgate {revision}; CPUs {os.cpu_count()}, shared by server and clients")
    # Anything else running on 2 cores skews every figure; a 1-minute load well above what the run
    # itself causes (about 2) at its end shows that something else competed.
    print(f"# load average (1 min) before the run: {load_before:.2f}, at its end: {os.getloadavg()[0]:.2f}")
    for note in notes:
        print(f"# {note}")
    for line in point_lines(results) + ratio_lines(results, args.concurrency):
        print(line)
    warn_invalid(results, "failed requests")
    print()
    print(table(results))


# -- main ------------------------------------------------------------------------------------------



def server_config(name: str) -> ServerConfig:
    precision, mode = name.split(".")
    return ServerConfig(name, PRECISIONS[precision], MODES[mode])


def bench_all(args: argparse.Namespace, workdir: Path) -> tuple[Results, list[str]]:
    model_dir = args.model or make_demo_model(workdir / "demo-model")
    results: Results = {}
    notes: list[str] = []
    for name in args.configs:
        log = workdir / f"{name}.log"
        progress(f"{name}: starting")
        try:
            with model_server(server_config(name), model_dir, log) as base_url:
                results[name] = asyncio.run(measure_config(base_url, args, name))
        except ServerFailed as exc:
            notes.append(f"{name}: UNAVAILABLE - " + str(exc).replace("\n", "\n#   "))
            progress(f"{name}: UNAVAILABLE - {exc}")
        notes += [f"{name}: server log {problem}" for problem in log_problems(log)]
    return results, notes


def config_list(text: str) -> tuple[str, ...]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(ALL_CONFIGS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown configs {sorted(unknown)}; choose from {','.join(ALL_CONFIGS)}")
    return tuple(name for name in ALL_CONFIGS if name in names)


def int_list(text: str) -> tuple[int, ...]:
    values = tuple(sorted({int(part) for part in text.split(",")}))
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("concurrency values must be >= 1")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tokens/s and TTFT of the bundled model server: int8 vs fp32, batched vs unbatched "
        "(see the module docstring for how to read the figures)."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point (default 10)")
    parser.add_argument("--concurrency", type=int_list, default=(1, 8, 32),
                        help="comma-separated concurrent streams (default 1,8,32)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default 64)")
    parser.add_argument("--configs", type=config_list, default=ALL_CONFIGS,
                        help=f"comma-separated subset of {','.join(ALL_CONFIGS)}")
    # A stalled request must fail the point, not hang the run; at c32 unbatched a request legitimately
    # waits for 31 others, so a large real model (--model) needs more than the default.
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="seconds a request may take before it counts as failed (default 60)")
    parser.add_argument("--model", type=Path,
                        help="an existing model directory to serve (default: a fresh demo model in a temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not WARDGATE_BIN.exists():
        print(f"error: {WARDGATE_BIN} not found (install the project into .venv first)", file=sys.stderr)
        return 2
    # SIGTERM takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-model-bench-"))
    # Taken before the servers start: the code measured is the code they loaded.
    revision = source_revision()
    load_before = os.getloadavg()[0]
    try:
        results, notes = bench_all(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except ServerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, notes, args, revision, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
