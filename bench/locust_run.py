#!/usr/bin/env python3
"""A headless Locust run of deploy/load/locustfile.py against a local gateway, and the same load straight
at the model server as the peer.

Starts a fake OpenAI-compatible model server (tests/fake_upstream.py, in this process) and a
``wardgate serve`` process in front of it with the shipped default policy (blacklist + classifier) and
its default SQLite audit log, then runs ``locust --headless`` for ``--duration`` seconds with ``--users``
users (spawned at ``--spawn-rate``/s; each waits 0.5-1.5 s between requests). The peer run sends the
same traffic to the fake model server directly, so the ratio shows what the gateway adds on top of the
load generator and the fake. Prints ``name: value unit`` lines: requests/s, p50/p99 (Locust's
aggregated percentiles), failures and, for the gateway, the share of correct decisions.

    .venv/bin/python bench/locust_run.py                       # 60 s per run, 100 users
    .venv/bin/python bench/locust_run.py --duration 10 --users 20

Locust, the gateway and the fake share this machine's cores: compare the two runs, not absolute figures
across machines.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from harness import BenchFailed, progress, ratio, wardgate_serving  # noqa: E402  (bench/harness.py)

from tests.fake_upstream import FakeUpstream  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
LOCUSTFILE = ROOT / "deploy" / "load" / "locustfile.py"
STARTUP_TIMEOUT_S = 120


def run_locust(name: str, host: str, workdir: Path, args: argparse.Namespace) -> dict:
    """One headless run; its aggregated statistics and, for the gateway, the decision summary."""
    csv_prefix = workdir / name
    summary_path = workdir / f"{name}-decisions.json"
    cmd = [str(VENV_BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s", "--host", host,
           "--csv", str(csv_prefix), "--stop-timeout", "10", "--loglevel", "WARNING"]
    progress(f"{name}: locust {args.users} users for {args.duration} s against {host}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120,
                          env={**os.environ, "WARDGATE_LOCUST_SUMMARY": str(summary_path)})
    # Locust exits 1 when any request failed: the figures are still read and the failures reported.
    if done.returncode not in (0, 1) or not summary_path.exists():
        raise BenchFailed(f"locust exited with {done.returncode}:\n{done.stderr[-3000:]}")
    with open(f"{csv_prefix}_stats.csv", newline="") as file:
        aggregated = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
    return {"stats": aggregated, "decisions": json.loads(summary_path.read_text())}


def report(name: str, result: dict) -> None:
    stats = result["stats"]
    print(f"{name}_requests: {int(stats['Request Count'])} requests")
    print(f"{name}_throughput: {float(stats['Requests/s']):.1f} requests/s")
    print(f"{name}_p50: {float(stats['50%']):.1f} ms")
    print(f"{name}_p99: {float(stats['99%']):.1f} ms")
    print(f"{name}_failures: {int(stats['Failure Count'])} requests")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds per run (default 60)")
    parser.add_argument("--users", type=int, default=100, help="Locust users (default 100)")
    parser.add_argument("--spawn-rate", type=int, default=10, help="users started per second (default 10)")
    parser.add_argument("--no-peer", action="store_true", help="skip the run straight at the model server")
    args = parser.parse_args()

    fake = FakeUpstream().start()
    try:
        with tempfile.TemporaryDirectory(prefix="wardgate-locust-") as scratch:
            workdir = Path(scratch)
            env = {**os.environ, "WARDGATE_STATE_DIR": str(workdir / "state")}
            with wardgate_serving(["--upstream", fake.url], workdir / "wardgate.log", STARTUP_TIMEOUT_S, env) as url:
                gateway = run_locust("gateway", url, workdir, args)
            peer = None if args.no_peer else run_locust("direct", fake.url, workdir, args)
    finally:
        fake.stop()

    report("gateway", gateway)
    decisions = gateway["decisions"]
    print(f"gateway_decision_accuracy: {100 * (decisions['accuracy'] or 0):.2f} % "
          f"({decisions['correct']} of {decisions['decisions']}; {decisions['by_kind']})")
    if peer is not None:
        report("direct", peer)
        for label, column in (("p50", "50%"), ("p99", "99%"), ("throughput", "Requests/s")):
            figure = ratio(float(gateway["stats"][column]), float(peer["stats"][column]))
            print(f"gateway_vs_direct_{label}: {figure:.2f} x")
    failed = int(gateway["stats"]["Failure Count"]) or decisions["accuracy"] is None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
