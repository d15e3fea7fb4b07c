"""The gateway's default upstream: the bundled model server, started as a child process.

`wardgate serve` with no `--upstream` runs `wardgate model-server` on `bundled_model_dir` (by default
the demo model, created on first use under the cache directory) on a free loopback port, waits until
it is ready, and stops it when the gateway stops (Linux: also when the gateway is killed). With
`--guard-model DIR` a second one serves that guard checkpoint the same way (beside the first, or alone
when an upstream is given); its log lines say component=guard-model-server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 120.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class BundledModelError(Exception):
    """The bundled model server could not be started; the message says why."""


def default_demo_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "wardgate" / "demo-model"


def ensure_demo_model(directory: Path) -> Path:
    if not (directory / "config.json").is_file():
        from gateway.model_server.demo import init_demo

        init_demo(directory)
    return directory


def _terminate_with_parent() -> None:
    """Runs in the child before exec: the kernel sends it SIGTERM when the gateway dies, however it
    dies. uvicorn ends a SIGTERM'd server by re-raising the signal, so no `finally` of ours would run."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_bundled_model_server(model_dir: Path | None, quantize: str, component: str = "model-server",
                                port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start the model server; returns the process and its base URL once it answers /readyz. `component`
    names it in its log lines and in errors; `port`: the one chosen beforehand (default: a free one)."""
    directory = model_dir if model_dir is not None else ensure_demo_model(default_demo_dir())
    port = port if port is not None else free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "model-server", "--model", str(directory), "--quantize", quantize,
         "--port", str(port), "--log-component", component],
        stdin=subprocess.DEVNULL,
        preexec_fn=_terminate_with_parent,
    )
    url = f"http://127.0.0.1:{port}"
    name = component.replace("-", " ")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BundledModelError(f"the bundled {name} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    process.terminate()
    raise BundledModelError(f"the bundled {name} was not ready after {READY_TIMEOUT_S:.0f} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
