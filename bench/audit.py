#!/usr/bin/env python3
"""Audit log write path: group commit against one fsynced transaction per record, on SQLite and PostgreSQL.

For each backend:

* ``group.cN`` - N concurrent requests each awaiting its record's commit through the AuditWriter
  (what the gateway does): records/s and the commit latency a request waits, p50/p99;
* ``per-record`` - the peer: the same records chained and committed one transaction each (what a
  naive audit log does), one writer: records/s and latency;
* ``group.cN/per-record`` - the throughput ratio.

Then, unless ``--no-gateway``, the gateway itself with the audit log off and on, in the same run
(bench/proxy_overhead.py's ``wardgate`` and ``wardgate-audit`` targets: wrk at 1, 16 and 64
connections, the gateway pinned to one core): ``wardgate-audit/wardgate.c64.rps`` is the share of
pass-through throughput the audit log keeps (goal: >= 0.9).

Records are realistic: a request record with verdicts, stage timings and a redacted prompt and
completion of about 300 characters each. Every commit is durable (SQLite: WAL, synchronous=FULL;
PostgreSQL: its default fsync).

Usage::

    .venv/bin/python bench/audit.py                      # both backends, 3 s a point
    .venv/bin/python bench/audit.py --backends sqlite --duration 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from harness import percentile  # noqa: E402  (bench/harness.py)

from privacy.audit.record import AuditRecord, new_record, retain_text  # noqa: E402
from privacy.audit.signing import HmacSigner  # noqa: E402
from privacy.audit.store import CheckpointPolicy, open_store  # noqa: E402
from privacy.audit.writer import AuditWriter, WriterSettings  # noqa: E402
from privacy.redact import retained  # noqa: E402

SIGNER = HmacSigner(b"bench-key-" * 4)
PROMPT = ("Please summarise the attached quarterly report for the board. Contact me at jane.doe@example.com "
          "or +44 20 7946 0958 if anything is unclear. ") * 2
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def request_record() -> AuditRecord:
    record = new_record(
        "request", tenant="acme", key_id="key-1", route="/v1/chat/completions", method="POST", status=200,
        model="demo", policy_version="2026-12-01.2", policy_digest="f" * 64, decision="allow",
        verdicts={"input": {"action": "allow", "stage": "classifier", "scores": {"unsafe": 0.02, "illegal": 0.01}}},
        stage_ms={"input": {"blacklist": 0.05, "classifier": 3.1}}, upstream={"status": 200, "ms": 41.2},
        tokens={"prompt": 61, "completion": 58}, latency_ms=45.3, retention="redacted",
    )
    for role in ("prompt", "completion"):
        record.texts.append(retain_text(role, PROMPT, retained(PROMPT, "redacted"), "user-42", 90))
    return record


async def group_commit(dsn: str, spill: Path, concurrency: int, duration: float) -> tuple[float, list[float]]:
    writer = AuditWriter(open_store(dsn), SIGNER, spill, WriterSettings())
    await asyncio.to_thread(writer.open)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def client() -> None:
        while time.perf_counter() < deadline:
            record = request_record()
            started = time.perf_counter()
            await writer.commit(record)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(writer.close)
    return len(latencies) / elapsed, latencies


def per_record(dsn: str, duration: float) -> tuple[float, list[float]]:
    store = open_store(dsn)
    store.migrate()
    latencies = []
    deadline = time.perf_counter() + duration
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        record = request_record()
        began = time.perf_counter()
        store.append([record], SIGNER, CheckpointPolicy())
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - started
    store.close()
    return len(latencies) / elapsed, latencies


def report(name: str, rate: float, latencies: list[float]) -> None:
    print(f"{name}.records_per_s: {rate:.0f} records/s")
    print(f"{name}.p50: {percentile(latencies, 0.50) * 1000:.2f} ms")
    print(f"{name}.p99: {percentile(latencies, 0.99) * 1000:.2f} ms")


def bench_backend(name: str, dsn: str, scratch: Path, duration: float, concurrencies: list[int]) -> None:
    peer_rate, latencies = per_record(dsn, duration)
    report(f"{name}.per-record", peer_rate, latencies)
    for concurrency in concurrencies:
        rate, latencies = asyncio.run(group_commit(dsn, scratch / f"spill-{concurrency}", concurrency, duration))
        report(f"{name}.group.c{concurrency}", rate, latencies)
        print(f"{name}.group.c{concurrency}/per-record: {rate / peer_rate:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--no-gateway", action="store_true", help="only the store-level figures")
    parser.add_argument("--gateway-duration", type=int, default=10, help="seconds per gateway point")
    args = parser.parse_args()
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for backend in args.backends.split(","):
            if backend == "sqlite":
                bench_backend("sqlite", str(scratch / "audit.sqlite3"), scratch, args.duration, concurrencies)
                continue
            import psycopg

            schema = f"wg_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
                connection.execute(f"CREATE SCHEMA {schema}")
            try:
                bench_backend("postgresql", f"{PG_ADMIN}?options=-csearch_path%3D{schema}", scratch, args.duration,
                              concurrencies)
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
                    connection.execute(f"DROP SCHEMA {schema} CASCADE")
    if not args.no_gateway:
        sys.stdout.flush()
        import proxy_overhead  # bench/proxy_overhead.py

        sys.exit(proxy_overhead.main(["--targets", "wardgate,wardgate-audit", "--concurrency", args.concurrency,
                                      "--duration", str(args.gateway_duration)]))


if __name__ == "__main__":
    main()
