"""What the benchmarks share: starting and stopping servers, progress on stderr, statistics, result warnings."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

WARDGATE_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "wardgate"


class BenchFailed(Exception):
    """A server would not start, or answered a check request wrongly: nothing worth measuring."""


class HasErrors(Protocol):
    errors: int


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def warn_invalid(results: Mapping[str, Mapping[int, HasErrors]], what: str) -> None:
    """A WARNING line for every target whose points had errors: a figure with failures is not valid."""
    for name, points in results.items():
        errors = sum(point.errors for point in points.values())
        if errors:
            print(f"WARNING: {name} had {errors} {what}; its figures are not valid")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started with `start_new_session=True` and everything it started (its process
    group): nothing may outlive the benchmark."""
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(proc: subprocess.Popen[bytes], is_ready: Callable[[], bool], log: Path, timeout_s: float,
               failure: type[Exception]) -> None:
    """Poll `is_ready` until it answers True; raise `failure` (with the log's tail) if the server
    exits or is not ready in time. Connection errors while it starts count as not ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise failure(f"exited with status {proc.returncode}:\n{log_tail(log)}")
        try:
            if is_ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise failure(f"not ready after {timeout_s:.0f} s:\n{log_tail(log)}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


@contextmanager
def wardgate_serving(args: list[str], log: Path, timeout_s: float,
                     env: dict[str, str] | None = None) -> Iterator[str]:
    """`wardgate serve ARGS` on a free port, its output in `log`; yields its URL once /readyz answers
    (BenchFailed if it does not) and stops it, and all it started, at the end of the block."""
    port = free_port()
    with log.open("wb") as log_file:
        proc = subprocess.Popen([str(WARDGATE_BIN), "serve", "--port", str(port), *args], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, lambda: http_ok(url + "/readyz"), log, timeout_s, BenchFailed)
        yield url
    finally:
        stop(proc)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default); NaN when there is nothing."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
