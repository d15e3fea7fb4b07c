"""Rate limits per tenant and per API key: the GCRA buckets with an injected clock, then real gateway
processes in front of the fake upstream, in-process and shared through the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import redis
import yaml

from gateway.config import ConfigError, RateLimits, load_settings
from gateway.errors import GatewayError
from gateway.exchange import begin_exchange
from gateway.ratelimit import LocalStore, RateLimiter, RedisStore, _duration
from gateway.telemetry import Metrics
from gateway.token_estimate import estimate_tokens
from tests.conftest import REDIS_URL, free_port
from tests.fake_upstream import STREAM_WORDS
from tests.test_errors import CHAT, assert_coded_error

KEYS = {"acme-ci": ("acme", "wg-acme-ci"), "acme-batch": ("acme", "wg-acme-batch"), "beta-ci": ("beta", "wg-beta")}


# -- the algorithm, with an injected clock ----------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


def _limiter(limits: dict, clock: Clock) -> tuple[RateLimiter, LocalStore]:
    store = LocalStore(clock)
    return RateLimiter(RateLimits.model_validate(limits), store, Metrics(), "t:"), store


async def _exchange(limiter: RateLimiter, tenant: str = "acme", key_id: str | None = None) -> dict:
    """One request through the limiter, as ProxyEndpoint makes it: admission (raises the coded 429),
    a response of 13 tokens, the charge. Returns the x-ratelimit-* headers of the response."""
    scope: dict = {}
    exchange = begin_exchange(scope, "request")
    exchange.tenant, exchange.key_id = tenant, key_id
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    wrapped = await limiter.admit(scope, send)
    await wrapped({"type": "http.response.start", "status": 200, "headers": []})
    exchange.tokens = {"prompt": 5, "completion": 8}
    await limiter.charge(scope)
    return {name.decode(): value.decode() for name, value in sent[0]["headers"]}


def _admit(limiter: RateLimiter, tenant: str = "acme", key_id: str | None = None) -> dict:
    return asyncio.run(_exchange(limiter, tenant, key_id))


def _refusal(limiter: RateLimiter, tenant: str = "acme", key_id: str | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as refused:
        _admit(limiter, tenant, key_id)
    return refused.value


def test_request_bucket_refills_one_request_every_interval():
    clock = Clock()
    limiter, _ = _limiter({"default": {"requests_per_minute": 3}}, clock)
    remaining = [_admit(limiter)["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = _refusal(limiter)
    assert refused.kind.code == "WG5003"
    assert refused.headers["Retry-After"] == "20"  # 60 s / 3: the first slot comes back after 20 s
    assert refused.headers["retry-after-ms"] == "20000"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.advance(19.9)
    assert _refusal(limiter).headers["Retry-After"] == "1"
    clock.advance(0.1)
    assert _admit(limiter)["x-ratelimit-remaining-requests"] == "0"
    clock.advance(60)
    assert _admit(limiter)["x-ratelimit-remaining-requests"] == "2"  # full again, never more than the limit


def test_refused_requests_are_not_counted():
    clock = Clock()
    limiter, _ = _limiter({"default": {"requests_per_minute": 1}}, clock)
    _admit(limiter)
    for _ in range(5):
        _refusal(limiter)
    clock.advance(60)
    _admit(limiter)


def test_token_bucket_is_charged_after_the_response():
    clock = Clock()
    limiter, _ = _limiter({"default": {"tokens_per_minute": 20}}, clock)
    # Each request uses 13 tokens (_admit charges them after its response).
    assert _admit(limiter)["x-ratelimit-remaining-tokens"] == "20"
    assert _admit(limiter)["x-ratelimit-remaining-tokens"] == "7"
    refused = _refusal(limiter)  # 26 tokens used of 20: the bucket is 6 tokens in debt
    assert refused.kind.code == "WG5004"
    assert "x-ratelimit-limit-requests" not in refused.headers
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    # Room for one token again after 7 tokens' worth of time: 7 * 3 s.
    assert refused.headers["Retry-After"] == "21"
    clock.advance(21)
    assert _admit(limiter)["x-ratelimit-remaining-tokens"] == "1"


def test_key_and_tenant_limits_both_apply_and_headers_show_the_tighter():
    clock = Clock()
    limiter, _ = _limiter({"tenants": {"acme": {"requests_per_minute": 3}},
                           "keys": {"acme-ci": {"requests_per_minute": 10}}}, clock)
    headers = _admit(limiter, "acme", "acme-ci")
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "2")
    _admit(limiter, "acme", "acme-batch")  # another key of the same tenant draws on the tenant's bucket
    _admit(limiter, "acme", "acme-ci")
    refused = _refusal(limiter, "acme", "acme-ci")
    assert "this tenant" in refused.message
    assert _admit(limiter, "beta", None) == {}  # no limit for beta: no headers


def test_idle_buckets_are_dropped():
    clock = Clock()
    limiter, store = _limiter({"default": {"requests_per_minute": 60}}, clock)
    for tenant in ("a", "b", "c"):
        _admit(limiter, tenant)
    assert len(store.tats) == 3
    clock.advance(61)
    _admit(limiter, "d")
    assert list(store.tats) == ["t:ratelimit:requests:tenant:d"]


def test_reset_duration_format():
    assert [_duration(us) for us in (0, 20_000, 1_500_000, 20_000_000, 60_000_000, 90_250_000)] == \
        ["0ms", "20ms", "1.5s", "20s", "1m0s", "1m30.25s"]


def test_bad_rate_limit_settings_are_refused(tmp_path):
    config = tmp_path / "wardgate.yaml"
    api_keys = [{"id": "acme-ci", "tenant": "acme", "sha256": "0" * 64}]
    config.write_text(yaml.safe_dump({"api_keys": api_keys, "rate_limits": {"keys": {"acme-cj": {}}}}))
    with pytest.raises(ConfigError, match="API key ids that are not in api_keys: acme-cj"):
        load_settings(config)
    config.write_text(yaml.safe_dump({"api_keys": api_keys, "rate_limits": {"tenants": {"acne": {}}}}))
    with pytest.raises(ConfigError, match="tenants that no API key has: acne"):
        load_settings(config)
    config.write_text(yaml.safe_dump({"rate_limits": {"default": {"requests_per_minute": "10"}}}))
    with pytest.raises(ConfigError, match=r"wardgate.yaml:3: rate_limits.default.requests_per_minute"):
        load_settings(config)
    config.write_text(yaml.safe_dump({"redis_url": "127.0.0.1:6379"}))
    with pytest.raises(ConfigError, match=r"wardgate.yaml:1: redis_url: .*must be a redis://"):
        load_settings(config)


def test_rate_limits_from_the_environment_may_name_keys_of_the_config_file(tmp_path, monkeypatch):
    """The layers are checked against each other once merged, not the environment on its own."""
    config = tmp_path / "wardgate.yaml"
    config.write_text(yaml.safe_dump({"api_keys": [{"id": "acme-ci", "tenant": "acme", "sha256": "0" * 64}]}))
    monkeypatch.setenv("WARDGATE_RATE_LIMITS", '{"keys": {"acme-ci": {"requests_per_minute": 2}}, '
                                               '"tenants": {"acme": {"tokens_per_minute": 50}}}')
    settings = load_settings(config)
    assert settings.rate_limits.keys["acme-ci"].requests_per_minute == 2
    assert settings.rate_limits.tenants["acme"].tokens_per_minute == 50
    # A typo is still caught, whichever layer it is in.
    monkeypatch.setenv("WARDGATE_RATE_LIMITS", '{"keys": {"acme-cj": {"requests_per_minute": 2}}}')
    with pytest.raises(ConfigError, match="API key ids that are not in api_keys: acme-cj"):
        load_settings(config)
    monkeypatch.delenv("WARDGATE_RATE_LIMITS")
    with pytest.raises(ConfigError, match="API key ids that are not in api_keys: acme-ci"):
        load_settings(rate_limits=RateLimits.model_validate({"keys": {"acme-ci": {"requests_per_minute": 2}}}))


# -- real gateways ------------------------------------------------------------------------------------

def _gateway(start_gateway, upstream, tmp_path: Path, rate_limits: dict, name: str = "wardgate.yaml",
             with_keys: bool = True, **settings: str):
    config = {"policy": "none", "rate_limits": rate_limits, **settings}
    if with_keys:
        config["api_keys"] = [{"id": key_id, "tenant": tenant, "sha256": hashlib.sha256(key.encode()).hexdigest()}
                              for key_id, (tenant, key) in KEYS.items()]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return start_gateway("--config", str(path), "--upstream", upstream.url)


def _post(client, gateway, key_id: str | None = None):
    headers = {"Authorization": f"Bearer {KEYS[key_id][1]}"} if key_id else {}
    return client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers)


def _metric(client, gateway, name: str) -> float:
    for line in client.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_request_limits_per_key_and_per_tenant(client, start_gateway, upstream, tmp_path):
    gateway = _gateway(start_gateway, upstream, tmp_path, {
        "tenants": {"acme": {"requests_per_minute": 4}},
        "keys": {"acme-ci": {"requests_per_minute": 2}},
    })
    first, second = _post(client, gateway, "acme-ci"), _post(client, gateway, "acme-ci")
    assert [first.status_code, second.status_code] == [200, 200]
    # The key's limit is the tighter one, so its figures are the ones shown.
    assert [(r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"])
            for r in (first, second)] == [("2", "1"), ("2", "0")]
    assert second.headers["x-ratelimit-reset-requests"].endswith("s")
    refused = _post(client, gateway, "acme-ci")
    error = assert_coded_error(refused, "WG5003")
    assert "this API key" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 30  # 2 per minute: one request every 30 s
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"

    # The tenant has 4, and the refused request took none of them: the other key gets the last 2.
    assert [_post(client, gateway, "acme-batch").status_code for _ in range(2)] == [200, 200]
    refused = _post(client, gateway, "acme-batch")
    assert "this tenant" in assert_coded_error(refused, "WG5003")["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 15

    # Another tenant is unaffected, and has no limit to report.
    other = [_post(client, gateway, "beta-ci") for _ in range(6)]
    assert {response.status_code for response in other} == {200}
    assert "x-ratelimit-limit-requests" not in other[0].headers
    assert _metric(client, gateway, 'wardgate_rate_limited_total{kind="requests",scope="key"}') == 1
    assert _metric(client, gateway, 'wardgate_rate_limited_total{kind="requests",scope="tenant"}') == 1


def test_token_limit_refuses_once_the_used_tokens_exceed_it(client, start_gateway, upstream, tmp_path):
    # No API keys: every caller is the `default` tenant. The echo model reports 5 + 8 tokens.
    gateway = _gateway(start_gateway, upstream, tmp_path, {"default": {"tokens_per_minute": 30}},
                       with_keys=False)
    answered = [_post(client, gateway) for _ in range(3)]
    assert [response.status_code for response in answered] == [200, 200, 200]
    assert [response.headers["x-ratelimit-remaining-tokens"] for response in answered] == ["30", "17", "4"]
    assert all(response.headers["x-ratelimit-limit-tokens"] == "30" for response in answered)
    refused = _post(client, gateway)  # 39 of 30 used
    assert_coded_error(refused, "WG5004")
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # room for one token after 10 tokens' worth (2 s each)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert _metric(client, gateway, 'wardgate_rate_limited_total{kind="tokens",scope="tenant"}') == 1


OUTPUT_POLICY = """version: "output-check"
output:
  stages:
    - type: blacklist
      rules:
        - {id: out.secret, category: confidential, literals: [forbidden-output]}
"""


def test_token_estimate_counts_cjk_characters_one_each_and_other_text_four_to_a_token():
    assert estimate_tokens([]) == 0
    assert estimate_tokens(["abcd" * 10]) == 10
    assert estimate_tokens(["abcde"]) == 2  # rounded up: a started token is a token
    assert estimate_tokens(["你好世界", "こんにちは", "안녕하세요"]) == 14
    assert estimate_tokens(["".join(STREAM_WORDS)]) == 9  # 28 other characters (7 tokens) and 你好


@pytest.mark.parametrize("policy", ["none", "output inspected"])
def test_answers_without_usage_are_charged_an_estimate(client, start_gateway, upstream, tmp_path, policy):
    """The fake upstream's streams and /v1/completions answers carry no `usage`: the prompt and the
    text that came back are estimated, whether or not a policy reads the stream on its way."""
    settings = {}
    if policy != "none":
        (tmp_path / "policy.yaml").write_text(OUTPUT_POLICY)
        settings["policy"] = str(tmp_path / "policy.yaml")
    gateway = _gateway(start_gateway, upstream, tmp_path, {"default": {"tokens_per_minute": 30}},
                       with_keys=False, **settings)
    streamed = client.post(gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    assert streamed.status_code == 200 and "你好" in streamed.text and '"usage"' not in streamed.text
    completed = client.post(gateway.url + "/v1/completions", json={"model": "echo", "prompt": "say hi"})
    assert completed.status_code == 200 and "usage" not in completed.json()
    after = _post(client, gateway)
    # "hello" (2) + the stream (9), then "say hi" (2) + " world" (2); 30 per minute refill one every 2 s.
    assert [response.headers["x-ratelimit-remaining-tokens"] for response in (streamed, completed, after)] == \
        ["30", "19", "15"]


def test_redis_store_charges_tokens_for_every_replica(redis_prefix):
    limits = RateLimits.model_validate({"keys": {"acme-ci": {"requests_per_minute": 5, "tokens_per_minute": 20}}})

    async def run() -> tuple[list[dict], GatewayError]:
        metrics = Metrics()
        replicas = [RateLimiter(limits, RedisStore(REDIS_URL, metrics), metrics, redis_prefix) for _ in range(2)]
        try:
            answered = [await _exchange(replica, "acme", "acme-ci") for replica in replicas]
            with pytest.raises(GatewayError) as refused:
                await _exchange(replicas[0], "acme", "acme-ci")
            return answered, refused.value
        finally:
            for replica in replicas:
                await replica.close()

    answered, refused = asyncio.run(run())
    assert [(h["x-ratelimit-remaining-requests"], h["x-ratelimit-remaining-tokens"]) for h in answered] == \
        [("4", "20"), ("3", "7")]
    assert refused.kind.code == "WG5004"
    assert 20 <= int(refused.headers["Retry-After"]) <= 21  # 6 tokens of debt + 1 token, 3 s each


def test_redis_shares_the_limits_between_gateways(client, start_gateway, upstream, tmp_path, redis_prefix):
    limits = {"tenants": {"acme": {"requests_per_minute": 3}}}
    first = _gateway(start_gateway, upstream, tmp_path, limits, "one.yaml", redis_url=REDIS_URL,
                     redis_prefix=redis_prefix)
    second = _gateway(start_gateway, upstream, tmp_path, limits, "two.yaml", redis_url=REDIS_URL,
                      redis_prefix=redis_prefix)
    answered = [_post(client, gateway, "acme-ci") for gateway in (first, second, first)]
    assert [response.status_code for response in answered] == [200, 200, 200]
    assert [response.headers["x-ratelimit-remaining-requests"] for response in answered] == ["2", "1", "0"]
    refused = _post(client, second, "acme-batch")
    assert_coded_error(refused, "WG5003")
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    store = redis.Redis.from_url(REDIS_URL)
    assert store.exists(f"{redis_prefix}ratelimit:requests:tenant:acme")
    store.close()


def test_redis_down_fails_open_and_says_so(client, start_gateway, upstream, tmp_path, redis_prefix):
    gateway = _gateway(start_gateway, upstream, tmp_path, {"default": {"requests_per_minute": 1}},
                       with_keys=False, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix=redis_prefix)
    answered = [_post(client, gateway) for _ in range(4)]
    assert [response.status_code for response in answered] == [200] * 4
    assert "x-ratelimit-limit-requests" not in answered[0].headers  # nothing was checked
    assert _metric(client, gateway, "wardgate_rate_limit_unenforced_total") == 4
    lines = gateway.wait_for_log(lambda line: line.get("event") == "rate_limit_store_unavailable")
    warnings = [line for line in lines if line.get("event") == "rate_limit_store_unavailable"]
    assert len(warnings) == 1
    assert "not enforced" in warnings[0]["detail"]


def test_without_limits_no_headers(client, gateway):
    response = client.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert not [name for name in response.headers if name.startswith("x-ratelimit")]
