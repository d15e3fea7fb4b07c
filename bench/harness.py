"""What the benchmarks share: stopping the servers they start, progress on stderr, result warnings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Protocol


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
