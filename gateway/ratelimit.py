"""Rate limits per tenant and per API key: requests per minute and tokens per minute.

The algorithm is GCRA (the generic cell rate algorithm: a token bucket kept as one timestamp).
Each bucket stores its theoretical arrival time (TAT), the moment at which it would be full again;
its "debt" is TAT - now. A request moves a request bucket's TAT forward by 60 s / limit and is
refused when the debt would then exceed one minute. Chosen because it is
- smooth: capacity comes back continuously (one request every 60/N s), with no burst of 2N at the
  edge of a fixed window;
- O(1): one integer per bucket, no log of timestamps;
- exact across replicas: with Redis, the check of every bucket a request touches and the increment
  run in one Lua script (atomic, one round trip), on Redis's clock, so clock skew between replicas
  does not matter.

Tokens: a request's token count is known only once the upstream has answered, so token buckets
are charged after the response, with prompt + completion tokens as the upstream reports them in
`usage`, and a request is refused (WG5004) while a token bucket of its tenant or key has less than
one token left. A successful answer without `usage` (a stream without `stream_options.include_usage`,
a server that never reports it) is charged an estimate from the prompt and the text that was
returned or streamed (gateway/token_estimate.py); a request the upstream did not answer with 200
costs no tokens. A single request may overdraw a bucket (the debt then delays later requests).

Times are integer microseconds, so that TATs are exact in Lua's doubles; costs are rounded down to
the microsecond, i.e. by less than limit / 60,000,000 requests or tokens per request.

A Redis outage must not become an outage: when Redis fails, requests are let through unchecked
(fail open), counted in `wardgate_rate_limit_unenforced_total`, with one log line when it starts and
one when Redis answers again; Redis is not tried again for `STORE_RETRY_S` after a failure, so that a
dead store adds no latency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NoReturn, Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from starlette.types import Message, Scope, Send

from gateway.config import RateLimit, RateLimits, Settings
from gateway.errors import RATE_LIMITED, TOKEN_RATE_LIMITED, GatewayError
from gateway.exchange import Exchange, exchange_of
from gateway.telemetry import Metrics
from gateway.token_estimate import TokenEstimate, estimate_tokens

PERIOD_US = 60_000_000
# A round trip to Redis takes well under a millisecond; a store slower than this is treated as down.
STORE_TIMEOUT_S = 0.25
STORE_RETRY_S = 1.0

LimitScope = Literal["tenant", "key"]
Kind = Literal["requests", "tokens"]

log = structlog.get_logger("wardgate.ratelimit")


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str  # storage key, prefix included
    scope: LimitScope
    kind: Kind
    limit: int  # per minute
    interval_us: int  # what one request (one token) adds to the debt

    def cost_us(self, amount: int) -> int:
        return amount * PERIOD_US // self.limit


@dataclass(frozen=True, slots=True)
class Plan:
    """The buckets of one (tenant, key id). A request passes when every bucket has room for one
    more request (one more token); only the request buckets are then charged."""

    buckets: tuple[Bucket, ...]
    token_buckets: tuple[Bucket, ...]


class Store(Protocol):
    async def check(self, buckets: tuple[Bucket, ...]) -> list[int] | None:
        """Each bucket's debt (µs, >= 0) before this request; when all pass (`passes`), the request
        buckets are charged one request in the same atomic step. None: the store failed."""

    async def charge(self, buckets: tuple[Bucket, ...], costs_us: list[int]) -> None:
        """Add `costs_us` to the buckets' debts."""

    async def close(self) -> None: ...


def passes(bucket: Bucket, debt_us: int) -> bool:
    return debt_us + bucket.interval_us <= PERIOD_US


class LocalStore:
    """The buckets of this process: a dict of TATs. A TAT in the past is a full bucket, the same as
    no entry, so such entries are swept once a minute and the dict holds only active buckets."""

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock_ns = clock_ns
        self.tats: dict[str, int] = {}
        self.next_sweep_us = 0

    def _now_us(self) -> int:
        now = self.clock_ns() // 1000
        if now >= self.next_sweep_us:
            self.tats = {key: tat for key, tat in self.tats.items() if tat > now}
            self.next_sweep_us = now + PERIOD_US
        return now

    async def check(self, buckets: tuple[Bucket, ...]) -> list[int]:
        now = self._now_us()
        tats = self.tats
        debts = [max(tats.get(bucket.key, now) - now, 0) for bucket in buckets]
        if all(map(passes, buckets, debts)):
            for bucket, debt in zip(buckets, debts, strict=True):
                if bucket.kind == "requests":
                    tats[bucket.key] = now + debt + bucket.interval_us
        return debts

    async def charge(self, buckets: tuple[Bucket, ...], costs_us: list[int]) -> None:
        now = self._now_us()
        for bucket, cost in zip(buckets, costs_us, strict=True):
            self.tats[bucket.key] = max(self.tats.get(bucket.key, now), now) + cost

    async def close(self) -> None:
        pass


# KEYS: the buckets; ARGV: the period, then per bucket its interval and 1 if a passing request
# charges it. Returns the debts. Numbers are written with %.0f: Lua's default format would round
# a 16-digit microsecond timestamp.
_CHECK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local period = tonumber(ARGV[1])
local debts = {}
local pass = true
for i, key in ipairs(KEYS) do
  local debt = math.max((tonumber(redis.call('GET', key)) or now) - now, 0)
  debts[i] = debt
  if debt + tonumber(ARGV[2 * i]) > period then pass = false end
end
if pass then
  for i, key in ipairs(KEYS) do
    if ARGV[2 * i + 1] == '1' then
      local debt = debts[i] + tonumber(ARGV[2 * i])
      redis.call('SET', key, string.format('%.0f', now + debt), 'PX', math.max(1, math.ceil(debt / 1000)))
    end
  end
end
return debts
"""

# KEYS: the buckets; ARGV: the cost to add to each.
_CHARGE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i, key in ipairs(KEYS) do
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now) + tonumber(ARGV[i])
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
return 0
"""


class RedisStore:
    """Buckets shared by every replica using the same Redis and prefix; fails open (see module doc)."""

    def __init__(self, url: str, metrics: Metrics) -> None:
        # No retries: a retry would only add latency to a request that passes anyway when Redis fails.
        self.redis = Redis.from_url(url, socket_timeout=STORE_TIMEOUT_S, socket_connect_timeout=STORE_TIMEOUT_S,
                                    retry=Retry(NoBackoff(), 0))
        self.check_script = self.redis.register_script(_CHECK)
        self.charge_script = self.redis.register_script(_CHARGE)
        self.metrics = metrics
        self.failing = False
        self.skip_until = 0.0

    async def check(self, buckets: tuple[Bucket, ...]) -> list[int] | None:
        args: list[int] = [PERIOD_US]
        for bucket in buckets:
            args += (bucket.interval_us, int(bucket.kind == "requests"))
        return await self._run(self.check_script, buckets, args)

    async def charge(self, buckets: tuple[Bucket, ...], costs_us: list[int]) -> None:
        await self._run(self.charge_script, buckets, costs_us)

    async def _run(self, script: AsyncScript, buckets: tuple[Bucket, ...], args: list[int]) -> list[int] | None:
        if self.skip_until and time.monotonic() < self.skip_until:
            return None
        try:
            result = await script(keys=[bucket.key for bucket in buckets], args=args)
        except (RedisError, OSError) as exc:
            self.skip_until = time.monotonic() + STORE_RETRY_S
            if not self.failing:
                self.failing = True
                log.warning("rate_limit_store_unavailable", error=f"{type(exc).__name__}: {exc}",
                            detail="rate limits are not enforced until Redis answers again")
            return None
        if self.failing:
            self.failing = False
            self.skip_until = 0.0
            log.info("rate_limit_store_recovered")
        return result

    async def close(self) -> None:
        await self.redis.aclose()


def _duration(microseconds: int) -> str:
    """OpenAI's x-ratelimit-reset-* format: `20ms`, `1.5s`, `6m0s`."""
    if microseconds < 1_000_000:
        return f"{math.ceil(microseconds / 1000)}ms"
    seconds = round(microseconds / 1_000_000, 3)
    minutes, seconds = divmod(seconds, 60)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


_HEADER_NAMES = {kind: tuple(f"x-ratelimit-{part}-{kind}".encode() for part in ("limit", "remaining", "reset"))
                 for kind in ("requests", "tokens")}


def _headers(plan: Plan, debts: list[int], charged: bool) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens}, each kind from its bucket with the
    least room left (the one that will refuse first)."""
    tightest: dict[str, tuple[int, Bucket, int]] = {}
    for bucket, debt in zip(plan.buckets, debts, strict=True):
        if charged and bucket.kind == "requests":
            debt += bucket.interval_us
        remaining = (PERIOD_US - debt) * bucket.limit // PERIOD_US
        best = tightest.get(bucket.kind)
        if best is None or remaining < best[0]:
            tightest[bucket.kind] = (remaining, bucket, debt)
    headers = []
    for kind, (remaining, bucket, debt) in tightest.items():
        limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
        headers += ((limit_name, b"%d" % bucket.limit), (remaining_name, b"%d" % max(remaining, 0)),
                    (reset_name, _duration(debt).encode()))
    return headers


class RateLimiter:
    """`send = await admit(scope, send)` after authentication (raises the coded 429; the returned
    send adds the x-ratelimit-* headers), `await charge(scope)` once the response has ended."""

    def __init__(self, limits: RateLimits, store: Store, metrics: Metrics, prefix: str) -> None:
        self.limits = limits
        self.store = store
        self.metrics = metrics
        self.prefix = prefix
        # Tenants and key ids are those of the configuration: the cache stays small.
        self.plans: dict[tuple[str, str | None], Plan | None] = {}

    def plan(self, tenant: str, key_id: str | None) -> Plan | None:
        cache_key = (tenant, key_id)
        if cache_key not in self.plans:
            entries: list[tuple[LimitScope, str, RateLimit | None]] = [
                ("tenant", tenant, self.limits.tenants.get(tenant, self.limits.default))
            ]
            if key_id is not None:
                entries.append(("key", key_id, self.limits.keys.get(key_id)))
            buckets = []
            for scope, name, limit in entries:
                if limit is None:
                    continue
                for kind, per_minute in (("requests", limit.requests_per_minute), ("tokens", limit.tokens_per_minute)):
                    if per_minute is not None:
                        key = f"{self.prefix}ratelimit:{kind}:{scope}:{name}"
                        buckets.append(Bucket(key, scope, kind, per_minute, PERIOD_US // per_minute))
            self.plans[cache_key] = Plan(tuple(buckets), tuple(b for b in buckets if b.kind == "tokens")) \
                if buckets else None
        return self.plans[cache_key]

    async def admit(self, scope: Scope, send: Send) -> Send:
        exchange = exchange_of(scope)
        plan = self.plan(exchange.tenant, exchange.key_id)
        if plan is None:
            return send
        debts = await self.store.check(plan.buckets)
        if debts is None:
            self.metrics.rate_limit_unenforced.inc()
            return send
        refusing = [(debt + bucket.interval_us - PERIOD_US, bucket)
                    for bucket, debt in zip(plan.buckets, debts, strict=True) if not passes(bucket, debt)]
        if refusing:
            self._refuse(plan, debts, refusing)
        if plan.token_buckets:
            exchange.rate_limit_plan = plan
            exchange.streamed_tokens = TokenEstimate()  # fed by note_stream, used if no usage comes
        headers = _headers(plan, debts, charged=True)

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        return send_with_limits

    def _refuse(self, plan: Plan, debts: list[int], refusing: list[tuple[int, Bucket]]) -> NoReturn:
        # Nothing was charged: the request may pass once every refusing bucket has room again.
        wait_us, bucket = max(refusing, key=lambda item: item[0])
        self.metrics.rate_limited.labels(bucket.scope, bucket.kind).inc()
        retry_after = max(1, math.ceil(wait_us / 1_000_000))
        who = "this API key" if bucket.scope == "key" else "this tenant"
        message = (f"Rate limit reached: {bucket.limit} {bucket.kind} per minute for {who}; "
                   f"retry after {retry_after} s.")
        headers = {"Retry-After": str(retry_after), "retry-after-ms": str(math.ceil(wait_us / 1000))}
        headers.update((name.decode(), value.decode()) for name, value in _headers(plan, debts, charged=False))
        raise GatewayError(RATE_LIMITED if bucket.kind == "requests" else TOKEN_RATE_LIMITED, message,
                           headers=headers)

    async def charge(self, scope: Scope) -> None:
        exchange = exchange_of(scope)
        plan = exchange.rate_limit_plan
        if plan is None:
            return
        tokens = exchange.tokens
        used = sum(tokens.values()) if tokens else _estimated_tokens(exchange)
        if used > 0:
            await self.store.charge(plan.token_buckets, [bucket.cost_us(used) for bucket in plan.token_buckets])

    async def close(self) -> None:
        await self.store.close()


def _estimated_tokens(exchange: Exchange) -> int:
    """Prompt + completion tokens of an answer that came without `usage` (see the module doc)."""
    if exchange.upstream_status != 200:
        return 0
    prompt = estimate_tokens(exchange.input_texts or ())
    completion = exchange.completion_text
    return prompt + (estimate_tokens((completion,)) if completion is not None else exchange.streamed_tokens.tokens)


def build_rate_limiter(settings: Settings, metrics: Metrics) -> RateLimiter | None:
    """None when no limit is configured: then the request path runs none of this."""
    if not settings.rate_limits.configured:
        return None
    if settings.redis_url is not None:
        store: Store = RedisStore(settings.redis_url, metrics)
    else:
        store = LocalStore()
        if settings.workers > 1:
            log.warning("rate_limits_per_worker", workers=settings.workers,
                        detail="without redis_url each worker process enforces the full limits on its own")
    return RateLimiter(settings.rate_limits, store, metrics, settings.redis_prefix)
