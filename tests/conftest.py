"""Real servers on loopback: the fake upstream in a thread; the gateway and the model server as
`wardgate serve` / `wardgate model-server` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from classifiers.data import DEFAULT_DATA_DIR, Example, load_examples
from privacy.audit.store import AuditFilter, open_store
from tests.fake_upstream import FakeUpstream

WARDGATE = str(Path(sys.executable).parent / "wardgate")
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def audit_events(database: Path) -> list[dict]:
    """The bodies of the admin events in an audit log, oldest first."""
    store = open_store(str(database))
    try:
        return [row.body for row in store.query(AuditFilter(kind="event"), limit=100)]
    finally:
        store.close()


class WardgateProcess:
    """`wardgate <command> --port P ...` on a free loopback port, up once `ready_path` answers 200."""

    def __init__(
        self, command: str, args: list[str], log_path: Path, ready_path: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [WARDGATE, command, "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self._wait_until_up(ready_path)

    def _wait_until_up(self, ready_path: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"wardgate exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"wardgate did not come up in {timeout_s:.0f} s:\n{self.log_path.read_text()}")

    def log_lines(self) -> list[dict]:
        self._log.flush()
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def wait_for_log(self, predicate, timeout_s: float = 5.0) -> list[dict]:
        """The log lines, once one satisfies `predicate`: the access line is written just after the
        response has gone out, so a test may read the log a moment before it is there."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = self.log_lines()
            if any(predicate(line) for line in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def stop(self) -> None:
        """Idempotent: a test may stop its server early, the fixture stops it again."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        self._log.close()


class GatewayProcess(WardgateProcess):
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        # Policy history and other state stay in the test's own directory unless a test shares one.
        env = {"WARDGATE_STATE_DIR": str(log_path.parent / "state"), **(env or {})}
        super().__init__("serve", args, log_path, "/healthz", env)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session", autouse=True)
def builtin_classifier_graph() -> Path:
    """The default policy runs the shipped classifier: its ONNX graph is built once (~20 s, cached
    under ~/.cache/wardgate/classifier across runs) before any gateway or policy test needs it, so
    that no server start waits for it."""
    from classifiers.export import onnx_graph
    from classifiers.registry import BUILTIN_DIR

    return onnx_graph(BUILTIN_DIR, "int8")


class GatewayStarter:
    """Starts gateways with the given command-line arguments. A gateway lives until the end of the
    test module that started it (each holds ~600 MB: a session's worth would not fit in memory),
    unless `session=True` keeps it for the whole session (the shared `gateway` fixture's)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.for_module: list[GatewayProcess] = []
        self.for_session: list[GatewayProcess] = []

    def __call__(self, *args: str, env: dict[str, str] | None = None, session: bool = False) -> GatewayProcess:
        log = self.tmp_path_factory.mktemp("gateway") / "wardgate.log"
        gateway = GatewayProcess(list(args), log, env)
        (self.for_session if session else self.for_module).append(gateway)
        return gateway

    def stop_module_gateways(self) -> None:
        while self.for_module:
            self.for_module.pop().stop()


@pytest.fixture(scope="session")
def start_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStarter]:
    starter = GatewayStarter(tmp_path_factory)
    yield starter
    starter.stop_module_gateways()
    for gateway in starter.for_session:
        gateway.stop()


@pytest.fixture(scope="module", autouse=True)
def _module_gateways_stop_with_their_module(start_gateway: GatewayStarter) -> Iterator[None]:
    yield
    start_gateway.stop_module_gateways()


@pytest.fixture(scope="session")
def gateway(start_gateway, upstream: FakeUpstream) -> GatewayProcess:
    """The default gateway in front of the fake upstream, with a 1 s read timeout for the slow cases."""
    return start_gateway("--upstream", upstream.url, "--read-timeout", "1", session=True)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model (random weights), built once per test session."""
    from gateway.model_server.demo import init_demo

    return init_demo(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of the test's own; its keys are deleted afterwards."""
    import uuid

    import redis

    prefix = f"wardgate-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


# The data tests read ../shared/data (DATA.md lists it); where it is not beside the repo they cannot run.
requires_shared_data = pytest.mark.skipif(not (DEFAULT_DATA_DIR / "DATA.md").exists(),
                                          reason="shared/data is not beside the repo")


@pytest.fixture(scope="session")
def examples() -> list[Example]:
    """Every labelled example of ../shared/data, loaded once for the data tests (~20 s)."""
    return load_examples(DEFAULT_DATA_DIR)
