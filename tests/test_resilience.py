"""Circuit breakers, retries and fallback upstreams: real gateway processes in front of real fake
upstreams on loopback (dead ones are free ports nobody listens on), and real Redis for shared state."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from gateway.breakers import BreakerOpen, Breakers
from gateway.config import Settings
from gateway.telemetry import Metrics
from tests.conftest import REDIS_URL, free_port
from tests.fake_upstream import FakeUpstream
from tests.tcp_proxy import TcpProxy

# Every fault below must be answered within this (the configured timeouts are far shorter).
FAULT_BOUND_S = 10.0


def chat(model: str = "echo", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def fast_breakers(fail_max: int = 3, reset_s: float = 30, **more: str) -> dict[str, str]:
    return {"WARDGATE_BREAKER_FAIL_MAX": str(fail_max), "WARDGATE_BREAKER_RESET_TIMEOUT_S": str(reset_s), **more}


def metric(gateway, series: str, **labels: str) -> float:
    """The value of one series in the gateway's /metrics (0 if absent)."""
    text = httpx.get(gateway.url + "/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(rf"^{series}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def post(gateway, body: dict) -> httpx.Response:
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.elapsed.total_seconds() < FAULT_BOUND_S
    return response


@pytest.fixture()
def sick() -> Iterator[FakeUpstream]:
    """An upstream of this test's own, so that its request count is this test's alone."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()



def test_dead_upstream_opens_breaker_and_fallback_serves(start_gateway, upstream):
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = start_gateway("--upstream", dead, "--fallback-upstream", upstream.url, "--policy", "none",
                            env=fast_breakers(fail_max=3))
    for _ in range(6):
        response = post(gateway, chat())
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "echo: hi"

    assert metric(gateway, "wardgate_breaker_state", name=f"upstream:{dead}") == 2
    assert metric(gateway, "wardgate_breaker_state", name=f"upstream:{upstream.url}") == 0
    assert metric(gateway, "wardgate_breaker_transitions_total", name=f"upstream:{dead}", to="open") == 1
    assert metric(gateway, "wardgate_upstream_fallbacks_total", upstream=upstream.url) == 6
    assert metric(gateway, "wardgate_upstream_retries_total", reason="connect_error") == 3
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["breakers"] == {f"upstream:{dead}": "open", f"upstream:{upstream.url}": "closed"}
    # The access log shows each request's attempts: first failed connects, then skips of the open breaker.
    lines = gateway.wait_for_log(lambda line: line.get("upstream_attempts", [{}])[0].get("outcome") == "circuit_open")
    outcomes = [[attempt["outcome"] for attempt in line["upstream_attempts"]]
                for line in lines if "upstream_attempts" in line]
    assert outcomes[0] == ["ClientConnectorError", "ok"]
    assert outcomes[-1] == ["circuit_open", "ok"]


def test_open_breaker_fails_fast_without_calling_upstream(start_gateway, sick):
    gateway = start_gateway("--upstream", sick.url, "--policy", "none", env=fast_breakers(fail_max=3))
    # One request: the first attempt and two retries all get 503, which opens the breaker.
    failed = post(gateway, chat("always-503"))
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "WG2004"
    assert "HTTP 503" in failed.json()["error"]["message"]
    called = sick.observed.requests
    assert called == 3

    for _ in range(5):
        refused = post(gateway, chat("echo"))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "WG2003"
        assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert sick.observed.requests == called  # not one more request reached the upstream
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["breakers"] == {f"upstream:{sick.url}": "open"}
    assert metric(gateway, "wardgate_errors_total", code="WG2003") == 5


def test_half_open_trial_closes_the_breaker_once_the_upstream_is_back(start_gateway, upstream):
    proxy = TcpProxy(upstream.port)
    try:
        gateway = start_gateway("--upstream", f"http://127.0.0.1:{proxy.port}", "--policy", "none",
                                env=fast_breakers(fail_max=2, reset_s=1))
        assert post(gateway, chat()).status_code == 200
        proxy.cut()
        # A connection dropped after the request was sent is never retried: one failure per request.
        codes = [post(gateway, chat()).json()["error"]["code"] for _ in range(3)]
        assert codes == ["WG2001", "WG2001", "WG2003"]
        proxy.restore()
        deadline = time.monotonic() + FAULT_BOUND_S
        while (response := post(gateway, chat())).status_code != 200:
            assert response.json()["error"]["code"] == "WG2003"
            assert time.monotonic() < deadline, "the breaker never let a trial request through"
            time.sleep(0.1)
        name = f"upstream:http://127.0.0.1:{proxy.port}"
        assert metric(gateway, "wardgate_breaker_state", name=name) == 0
        assert metric(gateway, "wardgate_breaker_transitions_total", name=name, to="half-open") == 1
        assert metric(gateway, "wardgate_breaker_transitions_total", name=name, to="closed") == 1
    finally:
        proxy.close()


def test_trial_failure_reopens_the_breaker(start_gateway, sick):
    gateway = start_gateway("--upstream", sick.url, "--policy", "none",
                            env=fast_breakers(fail_max=1, reset_s=1, WARDGATE_UPSTREAM_MAX_RETRIES="0"))
    assert post(gateway, chat("always-503")).json()["error"]["code"] == "WG2004"
    assert post(gateway, chat("always-503")).json()["error"]["code"] == "WG2003"
    time.sleep(1.2)
    assert post(gateway, chat("always-503")).json()["error"]["code"] == "WG2004"  # the trial, failed
    assert post(gateway, chat("echo")).json()["error"]["code"] == "WG2003"
    name = f"upstream:{sick.url}"
    assert metric(gateway, "wardgate_breaker_transitions_total", name=name, to="open") == 2
    assert sick.observed.requests == 2


def test_503_then_ok_is_retried_and_counted(start_gateway, upstream):
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none")
    model = f"503-once-{uuid.uuid4().hex}"
    response = post(gateway, chat(model))
    assert response.status_code == 200, response.text
    assert len(upstream.observed.arrival_times(model)) == 2
    assert metric(gateway, "wardgate_upstream_retries_total", reason="http_503") == 1
    lines = gateway.wait_for_log(lambda line: "upstream_attempts" in line)
    attempts = next(line["upstream_attempts"] for line in lines if "upstream_attempts" in line)
    assert [attempt["outcome"] for attempt in attempts] == ["http_503", "ok"]

    # A stream whose upstream answered 503 with a status line: nothing was relayed yet, so it is retried.
    model = f"503-once-{uuid.uuid4().hex}"
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=chat(model, stream=True)) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert len(upstream.observed.arrival_times(model)) == 2


def test_no_retry_after_a_stream_started_nor_after_a_read_timeout(start_gateway, sick):
    gateway = start_gateway("--upstream", sick.url, "--policy", "none", "--read-timeout", "1")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=chat("cut-stream", stream=True)) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line]
    assert '"WG2006"' in events[-2]
    assert sick.observed.requests == 1

    started = time.monotonic()
    response = post(gateway, chat("hang"))
    assert response.json()["error"]["code"] == "WG2002"
    assert time.monotonic() - started < 1 + FAULT_BOUND_S / 2
    assert sick.observed.requests == 2
    assert "wardgate_upstream_retries_total{" not in httpx.get(gateway.url + "/metrics").text


def test_retry_after_is_honoured(start_gateway, upstream):
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none")
    model = f"retry-after-2-{uuid.uuid4().hex}"
    assert post(gateway, chat(model)).status_code == 200
    first, second = upstream.observed.arrival_times(model)
    assert second - first >= 2.0  # never sooner than the upstream said

    # A Retry-After beyond the retry deadline (5 s by default): no retry, the client gets the delay.
    model = f"retry-after-60-{uuid.uuid4().hex}"
    response = post(gateway, chat(model))
    assert response.status_code == 502 and response.json()["error"]["code"] == "WG2004"
    assert response.headers["retry-after"] == "60"
    assert response.elapsed.total_seconds() < 5
    assert len(upstream.observed.arrival_times(model)) == 1


def test_retry_budget_caps_retries_under_a_failing_upstream(start_gateway, sick):
    gateway = start_gateway("--upstream", sick.url, "--policy", "none", env=fast_breakers(fail_max=10_000))
    for _ in range(100):
        assert post(gateway, chat("always-503")).json()["error"]["code"] == "WG2004"
    retries = metric(gateway, "wardgate_upstream_retries_total", reason="http_503")
    # 10 tokens to start with, 0.1 more per request: without the budget there would be 200 retries.
    assert 10 <= retries <= 10 + 100 * 0.1 + 1
    assert sick.observed.requests == 100 + retries


def test_gateways_sharing_redis_see_one_breaker_state(start_gateway, sick, redis_prefix):
    env = fast_breakers(fail_max=3, WARDGATE_REDIS_PREFIX=redis_prefix, WARDGATE_UPSTREAM_MAX_RETRIES="0")
    first = start_gateway("--upstream", sick.url, "--policy", "none", "--redis-url", REDIS_URL, env=env)
    second = start_gateway("--upstream", sick.url, "--policy", "none", "--redis-url", REDIS_URL, env=env)
    name = f"upstream:{sick.url}"
    for _ in range(3):
        assert post(first, chat("always-503")).json()["error"]["code"] == "WG2004"
    assert post(first, chat("always-503")).json()["error"]["code"] == "WG2003"
    called = len(sick.observed.arrival_times("always-503"))  # (readiness probes go to /v1/models)

    deadline = time.monotonic() + FAULT_BOUND_S
    while httpx.get(second.url + "/readyz").json()["breakers"][name] != "open":
        assert time.monotonic() < deadline, "the second gateway never saw the shared breaker open"
        time.sleep(0.05)
    refused = post(second, chat("always-503"))
    assert refused.json()["error"]["code"] == "WG2003"
    # The second gateway's breaker is open without a failure of its own.
    assert len(sick.observed.arrival_times("always-503")) == called == 3
    assert metric(second, "wardgate_breaker_state", name=name) == 2
    assert redis.Redis.from_url(REDIS_URL).get(f"{redis_prefix}breaker:{name}:pybreaker:state") == b"open"


def test_unreachable_redis_leaves_breakers_in_process(start_gateway, sick):
    gateway = start_gateway("--upstream", sick.url, "--policy", "none",
                            "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                            env=fast_breakers(fail_max=3))
    assert post(gateway, chat("echo")).status_code == 200
    assert post(gateway, chat("always-503")).json()["error"]["code"] == "WG2004"
    assert post(gateway, chat("echo")).json()["error"]["code"] == "WG2003"
    time.sleep(0.6)  # a few sync rounds, each of which finds Redis down
    warnings = [line for line in gateway.log_lines() if line.get("event") == "breaker_store_unavailable"]
    assert len(warnings) == 1


# The Breaker API on its own, as other dependencies (moderation hooks) use it.

class ClientMistake(Exception):
    pass


def breakers(fail_max: int = 2, reset_s: float = 0.2) -> Breakers:
    settings = Settings(upstream="http://127.0.0.1:1", breaker_fail_max=fail_max, breaker_reset_timeout_s=reset_s)
    return Breakers(settings, Metrics())


async def outcome(breaker, exc: Exception | None = None, **guard: object) -> str:
    try:
        async with breaker.guard(**guard):
            if exc is not None:
                raise exc
    except BreakerOpen:
        return "refused"
    except Exception:  # noqa: BLE001 - the block's own exception, passed through
        return "raised"
    return "ok"


def test_guard_counts_only_failures_the_caller_names():
    async def scenario() -> None:
        breaker = breakers().get("moderation:test")
        not_mine = {"is_failure": lambda exc: not isinstance(exc, ClientMistake)}
        for _ in range(5):
            assert await outcome(breaker, ClientMistake(), **not_mine) == "raised"
        assert breaker.state == "closed"
        assert await outcome(breaker, TimeoutError(), failure_types=(OSError,)) == "raised"  # TimeoutError is one
        assert await outcome(breaker, ValueError(), failure_types=(OSError,)) == "raised"  # a success: resets
        assert breaker.state == "closed"
        assert await outcome(breaker, OSError()) == "raised"
        assert await outcome(breaker, OSError()) == "raised"
        assert breaker.state == "open"
        assert await outcome(breaker) == "refused"

    asyncio.run(scenario())


def test_half_open_lets_exactly_one_trial_through():
    async def scenario() -> None:
        breaker = breakers(fail_max=1).get("moderation:test")
        await outcome(breaker, OSError())
        with pytest.raises(BreakerOpen) as refused:
            async with breaker.guard():
                pass
        assert 0 < refused.value.retry_after_s <= 0.2
        await asyncio.sleep(0.25)
        release = asyncio.Event()

        async def trial() -> None:
            async with breaker.guard():
                await release.wait()

        task = asyncio.create_task(trial())
        await asyncio.sleep(0.01)
        assert breaker.state == "half-open"
        assert await outcome(breaker) == "refused"  # the trial is in flight
        release.set()
        await task
        assert breaker.state == "closed"
        assert await outcome(breaker) == "ok"

    asyncio.run(scenario())


class BrokenUpstream(FakeUpstream):
    """A model server broken as a whole: HTTP 500 to every chat request."""

    async def _chat(self, request):
        from aiohttp import web

        self._observe(request)
        return web.json_response({"error": {"message": "model crashed"}}, status=500)


def test_a_primary_answering_500_to_everything_fails_over_when_500_counts(start_gateway, upstream):
    broken = BrokenUpstream().start()
    try:
        # By default a 500 is one failed generation: passed on, not counted, no failover.
        default = start_gateway("--upstream", broken.url, "--fallback-upstream", upstream.url, "--policy", "none",
                                env=fast_breakers(fail_max=2))
        assert [post(default, chat()).status_code for _ in range(4)] == [502] * 4
        # Counted as the breaker's failures, it opens the breaker and the fallback serves.
        statuses_setting = {"WARDGATE_BREAKER_FAILURE_STATUSES": "[500, 502, 503, 504]"}
        counting = start_gateway("--upstream", broken.url, "--fallback-upstream", upstream.url, "--policy", "none",
                                 env=fast_breakers(fail_max=2, **statuses_setting))
        statuses = [post(counting, chat()).status_code for _ in range(5)]
        assert statuses == [502, 502, 200, 200, 200]  # a 500 is not retried: the request may have been processed
        assert metric(counting, "wardgate_breaker_state", name=f"upstream:{broken.url}") == 2
    finally:
        broken.stop()
