"""What the benchmarks share: starting and stopping servers, progress on stderr, statistics, result warnings."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
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


def pinned(cpus: frozenset[int]) -> Callable[[], None]:
    # Set in the child before exec, so that every process it forks (nginx and uvicorn workers)
    # inherits the affinity.
    return lambda: os.sched_setaffinity(0, cpus)


@contextmanager
def running(cmd: Sequence[str], log: Path, cpus: frozenset[int] | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server for the duration of the block, its output in `log`, pinned to `cpus` if given, in
    its own session (Ctrl-C in the terminal reaches only the benchmark, and `stop` ends the whole
    group); always torn down."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, preexec_fn=pinned(cpus) if cpus is not None else None,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def http(method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout_s: float = 10.0) -> tuple[int, str]:
    """One request: its status and body, an HTTP error status included (a connection error raises)."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


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
    with running([str(WARDGATE_BIN), "serve", "--port", str(port), *args], log, env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, lambda: http_ok(url + "/readyz"), log, timeout_s, BenchFailed)
        yield url


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
