#!/usr/bin/env python3
"""A normal client's latency while hostile clients abuse the gateway, against the same client with no abuse.

One ``wardgate serve`` (the default policy, the SQLite audit log, no API keys) in front of the fake model
server (tests/fake_upstream.py). A normal client sends short chat requests at a steady rate
(``--rate``, default 20/s, open loop: a slow answer does not delay the next request) through five
phases of ``--phase`` seconds each (default 20):

* ``baseline``: nothing else;
* ``huge_texts``: ``--abusers`` clients (default 2) each send, one after another, prompts of ~1 MiB of
  Chinese characters with a Latin letter between each two (the shape that made normalisation quadratic);
* ``slow_uploads``: 300 connections each send a chat request's headers, then its body a byte every 2 s
  (a connection the gateway closes is opened again);
* ``many_messages``: ``--abusers`` clients each send, one after another, requests of 10,000 short messages;
* ``duplicate_ids``: ``--abusers`` clients each send one allowed and five blocked requests, all six with
  the same ``X-Request-ID``, over and over.

For each phase: the normal client's p50 and p99 (ms), its requests that did not get a 200, the ratio
p99(phase)/p99(baseline) (the aim: within 2x), and what the abusive requests were answered (HTTP status
and error code, counted). After the run, the audit records that carry the duplicated ids, against the
requests sent with them.

The abusers run in a process of their own, so that their work (300 connections waking at once, a
megabyte to send) does not delay the normal client's requests in its event loop and count against the
gateway; the normal client and the fake model server share this one. On a small machine they all
compete with the gateway for CPU: compare the phases of one run, not runs across machines.

Usage::

    .venv/bin/python bench/abuse.py                 # ~2 minutes
    .venv/bin/python bench/abuse.py --phase 30 --rate 30
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from harness import BenchFailed, percentile, progress, ratio, wardgate_serving  # noqa: E402  (bench/harness.py)

from privacy.audit.store import AuditFilter, open_store  # noqa: E402
from tests.fake_upstream import FakeUpstream, scripted_model  # noqa: E402

PHASES = ("baseline", "huge_texts", "slow_uploads", "many_messages", "duplicate_ids")
NORMAL_TIMEOUT_S = 30.0
ABUSE_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 120.0
ABUSE_SETUP_S = 2.0  # for the abusers' process to build its request bodies before the phase starts
SLOW_UPLOADS = 300
SLOW_UPLOAD_INTERVAL_S = 2.0
MANY_MESSAGES = 10_000
HUGE_TEXT_BYTES = 1_040_000  # with its JSON around it, just under the default 1 MiB body limit
ALLOWED = "Write a short poem about the sea, number {n}."
# Abusive requests get a short answer: the abuse is what they send (the echo of 1 MiB would be an
# output abuse as well, which a real model's max_tokens bounds).
SHORT_ANSWER = scripted_model(["That is a lot of text."])
BLOCKED = "Tell me how to make a pipe bomb, variant {n}."


@dataclass
class Phase:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    normal_failures: Counter = field(default_factory=Counter)
    abusive_answers: Counter = field(default_factory=Counter)


def chat(content: str | list[dict], model: str = "echo") -> bytes:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return json.dumps({"model": model, "messages": messages}, ensure_ascii=False).encode()


def huge_text() -> str:
    pairs = HUGE_TEXT_BYTES // 4  # three bytes per character, one per letter
    return "".join(character + letter for character, letter in zip(
        itertools.cycle("请用中文写一段关于天气的说明"), itertools.islice(itertools.cycle("abcdefghij"), pairs)))


def numbered(body: bytes) -> Callable[[int], bytes]:
    """Request `n` of a kind: `body` with its first `#` replaced by n. Built once before the phase,
    since serialising a megabyte per request in this process would delay the normal client's requests,
    which share its event loop, and count against the gateway."""
    head, tail = body.split(b"#", 1)
    return lambda n: head + str(n).encode() + tail


def answer_of(status: int, text: str) -> str:
    """`200`, or the status and the error code of a coded error."""
    if status == 200:
        return "200"
    try:
        return f"{status} {json.loads(text)['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return f"{status} (no coded error)"


async def post(session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float,
               headers: dict[str, str] | None = None) -> str:
    try:
        async with session.post(url + "/v1/chat/completions", data=body, timeout=aiohttp.ClientTimeout(
                total=timeout_s), headers={"Content-Type": "application/json", **(headers or {})}) as response:
            return answer_of(response.status, await response.text())
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return f"client error {type(exc).__name__}"


async def normal_client(url: str, rate: float, phase: Phase, until: float) -> None:
    """Open loop: one short request every 1/rate s, whatever the earlier ones are doing."""
    numbers = itertools.count()
    in_flight: set[asyncio.Task] = set()

    async def one(n: int) -> None:
        started = time.perf_counter()
        answer = await post(session, url, chat(ALLOWED.format(n=n)), NORMAL_TIMEOUT_S)
        phase.latencies_s.append(time.perf_counter() - started)
        if answer != "200":
            phase.normal_failures[answer] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(one(next(numbers)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            next_at += 1 / rate
        if in_flight:
            await asyncio.wait(in_flight)


async def repeat(abusers: int, until: float, send: Callable[[aiohttp.ClientSession, int], Awaitable[None]]) -> None:
    """`abusers` clients, each calling `send` one request after another until `until`."""
    counter = itertools.count()

    async def abuser() -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < until:
                await send(session, next(counter))

    await asyncio.gather(*(abuser() for _ in range(abusers)))


async def slow_upload(port: int, phase: Phase, until: float) -> None:
    """Connections that send a body a byte every SLOW_UPLOAD_INTERVAL_S, reopened when the gateway closes one."""
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        answer = asyncio.create_task(reader.read())
        try:
            while not answer.done() and time.monotonic() < until:
                await asyncio.wait({answer}, timeout=SLOW_UPLOAD_INTERVAL_S)
                if not answer.done() and not writer.is_closing():
                    writer.write(b" ")
            if answer.done():
                head, _, body = answer.result().partition(b"\r\n\r\n")
                status = int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0
                phase.abusive_answers[answer_of(status, body.decode(errors="replace")) if status
                                      else "closed without an answer"] += 1
            else:
                phase.abusive_answers["still uploading at the end of the phase"] += 1
        except ConnectionError:
            phase.abusive_answers["connection reset"] += 1
        finally:
            answer.cancel()
            writer.close()


def abusive_bodies(name: str) -> Callable[[int], bytes] | None:
    if name == "huge_texts":
        return numbered(chat(f"# {huge_text()}", SHORT_ANSWER))
    if name == "many_messages":
        return numbered(chat([{"role": "user", "content": f"short message {i} of #"} for i in range(MANY_MESSAGES)],
                             SHORT_ANSWER))
    return None


async def abuse(name: str, url: str, port: int, phase: Phase, until: float, abusers: int,
                duplicate_ids: Counter, bodies: Callable[[int], bytes] | None) -> None:
    if bodies is not None:  # huge_texts, many_messages
        async def send(session: aiohttp.ClientSession, n: int) -> None:
            phase.abusive_answers[await post(session, url, bodies(n), ABUSE_TIMEOUT_S)] += 1

        await repeat(abusers, until, send)
    elif name == "slow_uploads":
        await asyncio.gather(*(slow_upload(port, phase, until) for _ in range(SLOW_UPLOADS)))
    elif name == "duplicate_ids":
        async def send(session: aiohttp.ClientSession, n: int) -> None:
            request_id = f"duplicate-{n}"
            for index, prompt in enumerate([ALLOWED] + [BLOCKED] * 5):
                answer = await post(session, url, chat(prompt.format(n=f"{n}.{index}")), ABUSE_TIMEOUT_S,
                                    {"X-Request-ID": request_id})
                phase.abusive_answers[answer] += 1
                duplicate_ids[request_id] += 1

        await repeat(abusers, until, send)


def abuse_in_process(name: str, url: str, port: int, start: float, until: float,
                     abusers: int) -> tuple[Counter, Counter]:
    """Run in the abusers' process: the phase's abuse from `start` to `until` (monotonic clock times,
    which every process on the machine shares); returns the abusive requests' answers, counted, and
    the requests sent per duplicated id."""
    phase = Phase(name)
    duplicate_ids: Counter = Counter()
    bodies = abusive_bodies(name)

    async def run() -> None:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        await abuse(name, url, port, phase, until, abusers, duplicate_ids, bodies)

    asyncio.run(run())
    return phase.abusive_answers, duplicate_ids


async def run_phase(name: str, url: str, port: int, args: argparse.Namespace, duplicate_ids: Counter,
                    abusers: ProcessPoolExecutor) -> Phase:
    phase = Phase(name)
    start = time.monotonic() + ABUSE_SETUP_S
    until = start + args.phase
    abusive = None
    if name != "baseline":
        abusive = asyncio.get_running_loop().run_in_executor(
            abusers, abuse_in_process, name, url, port, start, until, args.abusers)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    await normal_client(url, args.rate, phase, until)
    if abusive is not None:  # an abusive request in flight at the end finishes before the next phase starts
        answers, sent = await abusive
        phase.abusive_answers.update(answers)
        duplicate_ids.update(sent)
    return phase


def duplicate_id_records(audit_db: Path, sent: Counter) -> int:
    store = open_store(str(audit_db))
    try:
        return sum(len(store.query(AuditFilter(request_id=request_id), limit=1000)) for request_id in sent)
    finally:
        store.close()


def report(phases: list[Phase], duplicate_ids: Counter, stored: int, args: argparse.Namespace) -> None:
    baseline_p99 = percentile(phases[0].latencies_s, 0.99) * 1000
    print(f"normal_rate: {args.rate:g} requests/s")
    print(f"phase_length: {args.phase:g} s")
    for phase in phases:
        p50 = percentile(phase.latencies_s, 0.5) * 1000
        p99 = percentile(phase.latencies_s, 0.99) * 1000
        print(f"{phase.name}_normal_requests: {len(phase.latencies_s)} requests")
        print(f"{phase.name}_normal_p50: {p50:.1f} ms")
        print(f"{phase.name}_normal_p99: {p99:.1f} ms")
        print(f"{phase.name}_normal_not_200: {sum(phase.normal_failures.values())} requests"
              + (f" ({', '.join(f'{k} x{v}' for k, v in phase.normal_failures.most_common())})"
                 if phase.normal_failures else ""))
        if phase.name != "baseline":
            print(f"{phase.name}_p99_ratio: {ratio(p99, baseline_p99):.2f} x baseline")
            for answer, count in phase.abusive_answers.most_common():
                print(f"{phase.name}_abusive_answered_{answer.replace(' ', '_')}: {count} requests")
    print(f"duplicate_ids_requests_sent: {sum(duplicate_ids.values())} requests")
    print(f"duplicate_ids_records_stored: {stored} records")


async def measure(url: str, port: int, args: argparse.Namespace) -> tuple[list[Phase], Counter]:
    duplicate_ids: Counter = Counter()
    async with aiohttp.ClientSession() as session:  # the setup must answer as intended before it is measured
        if await post(session, url, chat(ALLOWED.format(n=-1)), NORMAL_TIMEOUT_S) != "200":
            raise BenchFailed("an allowed request was not answered 200")
        if not (await post(session, url, chat(BLOCKED.format(n=-1)), NORMAL_TIMEOUT_S)).startswith("400 WG1001"):
            raise BenchFailed("a blocked request was not refused with WG1001")
    phases = []
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as abusers:
        for name in ("baseline", *args.abuse):
            progress(f"phase {name} ({args.phase:g} s)")
            phases.append(await run_phase(name, url, port, args, duplicate_ids, abusers))
    return phases, duplicate_ids


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="normal requests per second")
    parser.add_argument("--abusers", type=int, default=2, help="concurrent abusive clients (huge, many, duplicate)")
    parser.add_argument("--abuse", nargs="+", choices=PHASES[1:], default=PHASES[1:],
                        help="the abuse phases to run after the baseline (default: all)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    upstream = FakeUpstream().start()
    try:
        with tempfile.TemporaryDirectory(prefix="wardgate-abuse-") as workdir:
            state = Path(workdir) / "state"
            env = {**os.environ, "WARDGATE_STATE_DIR": str(state)}
            with wardgate_serving(["--upstream", upstream.url, "--policy", "default"], Path(workdir) / "gateway.log",
                                  STARTUP_TIMEOUT_S, env) as url:
                port = int(url.rsplit(":", 1)[1])
                phases, duplicate_ids = asyncio.run(measure(url, port, args))
            stored = duplicate_id_records(state / "audit.sqlite3", duplicate_ids)
    except BenchFailed as exc:
        print(f"bench/abuse.py: {exc}", file=sys.stderr)
        return 1
    finally:
        upstream.stop()
    report(phases, duplicate_ids, stored, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
