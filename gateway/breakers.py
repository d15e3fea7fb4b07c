"""Circuit breakers: pybreaker's state machine and storage, driven from asyncio.

pybreaker's `call_async` needs Tornado and holds a thread lock across the await, so it is not used.
Instead a `Breaker` decides admission itself from a view of the stored state, lets the guarded block
run with no lock held, and then *replays* the block's outcome through pybreaker's public, synchronous
`CircuitBreaker.call` (a function that returns, or raises the failure): pybreaker counts it, trips,
half-opens and closes exactly as it would for a synchronous call, its lock held only for that replay.

    breakers = Breakers(settings, metrics)
    async with breakers.get("moderation:openai").guard(is_failure=lambda exc: ...):
        await call_the_dependency()

With `redis_url`, state lives in Redis (pybreaker's `CircuitRedisStorage`, one namespace per breaker),
shared by every replica. The redis client is synchronous, so no Redis call runs on the event loop:
admission reads a view refreshed every `SYNC_INTERVAL_S` by a background task, and storage writes
(failures, transitions, the first success after failures) go to one worker thread. A success while
the view says "closed, no failures" writes nothing, so the healthy hot path does no Redis I/O at all.
If Redis cannot be reached the breakers carry on with in-process state (logged once) and rejoin the
shared state when it answers again: a breaker never becomes an outage itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import pybreaker
import redis
import structlog

from gateway.config import Settings

if TYPE_CHECKING:  # gateway.telemetry imports the request path, which uses breakers
    from gateway.telemetry import Metrics

T = TypeVar("T")

# How stale a replica's view of the shared state may be; also the Redis health check period.
SYNC_INTERVAL_S = 0.25
# Redis must answer fast or be treated as down: the breakers must never wait on it for long.
REDIS_TIMEOUT_S = 0.25
# Retry-After for callers turned away while this process's half-open trial call is in flight.
TRIAL_WAIT_S = 1.0

# pybreaker logs a traceback for every failed Redis call; the registry reports an outage once instead.
logging.getLogger("pybreaker").setLevel(logging.CRITICAL)
log = structlog.get_logger("wardgate.breakers")


class BreakerOpen(Exception):
    """The breaker `name` is open: the dependency was not called. Try again in `retry_after_s`."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open")
        self.name = name
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1, as HTTP's Retry-After wants them."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(frozen=True, slots=True)
class _View:
    state: str
    opened_at: float | None  # epoch seconds
    failures: int


class _Replayed(Exception):
    """A guarded block's failure, replayed through pybreaker."""


def _fail() -> None:
    raise _Replayed


def _succeed() -> None:
    return None


class _StateGauge(pybreaker.CircuitBreakerListener):
    def __init__(self, name: str, metrics: Metrics | None) -> None:
        self.name = name
        self.metrics = metrics

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        if self.metrics is not None:
            self.metrics.set_breaker_state(self.name, new_state.name)
        log.warning("breaker_state", breaker=self.name, state=new_state.name,
                    previous=old_state.name if old_state is not None else None)


class Breaker:
    """One dependency's breaker. Use `async with breaker.guard(): ...` around each call to it."""

    def __init__(self, name: str, fail_max: int, reset_timeout_s: float, metrics: Metrics | None) -> None:
        self.name = name
        self.reset_timeout_s = reset_timeout_s
        self._fail_max = fail_max
        self._listener = _StateGauge(name, metrics)
        self._io: ThreadPoolExecutor | None = None  # the Redis worker thread, once the state is shared
        self._trial = False  # this process's half-open trial call is in flight
        self._attach(pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED))
        if metrics is not None:
            metrics.show_breaker_state(name, pybreaker.STATE_CLOSED)

    def _attach(self, storage: pybreaker.CircuitBreakerStorage) -> None:
        self._storage = storage
        self._cb = pybreaker.CircuitBreaker(
            fail_max=self._fail_max, reset_timeout=self.reset_timeout_s, state_storage=storage,
            listeners=[self._listener], name=self.name,
            # Replays raise our own marker on a trip, not a new CircuitBreakerError.
            throw_new_error_on_trip=False,
        )
        self.view = self._read()

    @property
    def shared(self) -> bool:
        return isinstance(self._storage, pybreaker.CircuitRedisStorage)

    @property
    def state(self) -> str:
        """closed, half-open or open, as this process last saw it."""
        return self.view.state

    def _read(self) -> _View:
        """The stored state (Redis I/O when shared). `cb.state` notices another replica's transition
        and tells the listener, so that this replica's gauge follows."""
        state = self._cb.state.name
        opened = self._storage.opened_at
        return _View(state, opened.timestamp() if opened is not None else None, self._storage.counter)

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a trial call through; 0 when it is not open."""
        view = self.view
        if view.state != pybreaker.STATE_OPEN or view.opened_at is None:
            return 0.0
        return max(0.0, view.opened_at + self.reset_timeout_s - time.time())

    def guard(self, failure_types: tuple[type[BaseException], ...] = (Exception,),
              is_failure: Callable[[BaseException], bool] | None = None) -> _Guard:
        """An async context manager for one call to the dependency. Raises `BreakerOpen` on entry
        when the breaker is open (or its half-open trial is taken). An exception leaving the block
        counts as a failure if it is one of `failure_types` and `is_failure` (if given) says so;
        any other `Exception` means the dependency answered (e.g. a client error) and counts as a
        success; cancellation counts as neither."""
        return _Guard(self, failure_types, is_failure)

    async def _storage_call(self, function: Callable[[], T]) -> T:
        if self._io is None:
            return function()
        return await asyncio.get_running_loop().run_in_executor(self._io, function)

    async def _admit(self) -> bool:
        """Whether this call is the half-open trial; raises BreakerOpen when it may not run."""
        view = self.view  # every change goes through _record/_half_open or sync(), which refresh it
        if view.state == pybreaker.STATE_CLOSED:
            return False
        remaining = self.retry_after_s()
        if remaining > 0:
            raise BreakerOpen(self.name, remaining)
        if self._trial:
            raise BreakerOpen(self.name, TRIAL_WAIT_S)
        self._trial = True  # set before any await: concurrent callers see it
        if view.state == pybreaker.STATE_OPEN:
            try:
                self.view = await self._storage_call(self._half_open)
            except BaseException:
                self._trial = False
                raise
        return True

    def _half_open(self) -> _View:
        self._cb.half_open()
        return self._read()

    async def _record(self, failed: bool, trial: bool) -> None:
        view = self.view
        if not failed and not trial and view.state == pybreaker.STATE_CLOSED and view.failures == 0:
            return  # nothing would change: no storage write on the healthy path
        self.view = await self._storage_call(lambda: self._replay(failed))

    def _replay(self, failed: bool) -> _View:
        # _Replayed: the failure, counted (and the trip, if it was one). CircuitBreakerError: the
        # breaker opened meanwhile (another call or replica); a late outcome changes nothing.
        with contextlib.suppress(_Replayed, pybreaker.CircuitBreakerError):
            self._cb.call(_fail if failed else _succeed)
        return self._read()


class _Guard:
    __slots__ = ("breaker", "failure_types", "is_failure", "trial")

    def __init__(self, breaker: Breaker, failure_types: tuple[type[BaseException], ...],
                 is_failure: Callable[[BaseException], bool] | None) -> None:
        self.breaker = breaker
        self.failure_types = failure_types
        self.is_failure = is_failure
        self.trial = False

    async def __aenter__(self) -> None:
        self.trial = await self.breaker._admit()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        breaker = self.breaker
        try:
            if exc is None:
                await breaker._record(False, self.trial)
            elif isinstance(exc, Exception):
                failed = isinstance(exc, self.failure_types) and (self.is_failure is None or self.is_failure(exc))
                await breaker._record(failed, self.trial)
        finally:
            if self.trial:
                breaker._trial = False


class Breakers:
    """The process's breakers by name, created on first `get` (cheap: no I/O; a shared breaker joins
    Redis on the next sync). `start()`/`stop()` run the Redis sync task when `redis_url` is set."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.fail_max = settings.breaker_fail_max
        self.reset_timeout_s = settings.breaker_reset_timeout_s
        self.metrics = metrics
        self.prefix = settings.redis_prefix
        self._breakers: dict[str, Breaker] = {}
        self._redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        ) if settings.redis_url else None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="breakers-redis") if self._redis is not None else None
        self._redis_up: bool | None = None  # unknown until the first sync
        self._task: asyncio.Task | None = None

    def get(self, name: str) -> Breaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = Breaker(name, self.fail_max, self.reset_timeout_s, self.metrics)
        return breaker

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self._breakers.items()}

    async def start(self) -> None:
        if self._redis is not None:
            await self.sync()
            self._task = asyncio.create_task(self._sync_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the sync loop must outlive any surprise
                log.exception("breaker_sync_failed")

    async def sync(self) -> None:
        """Refresh every shared breaker's view from Redis; move between Redis and in-process state
        as Redis comes and goes."""
        loop = asyncio.get_running_loop()
        up = await loop.run_in_executor(self._io, self._ping)
        if up != self._redis_up:  # logged once per change, not per call
            if up:
                log.info("breaker_store_connected", store="redis")
            else:
                log.warning("breaker_store_unavailable", store="redis",
                            detail="breakers keep their state in process until Redis answers")
            self._redis_up = up
        for name, breaker in list(self._breakers.items()):
            if up and not breaker.shared:
                storage = await loop.run_in_executor(self._io, self._redis_storage, name)
                if storage is not None:
                    # From here on every storage call of this breaker runs in the worker thread, in order.
                    breaker._io = self._io
                    await loop.run_in_executor(self._io, breaker._attach, storage)
            elif not up and breaker.shared:
                breaker._io = None
                breaker._attach(_memory_storage(breaker.view))
            elif up:
                breaker.view = await loop.run_in_executor(self._io, breaker._read)

    def _ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def _redis_storage(self, name: str) -> pybreaker.CircuitRedisStorage | None:
        try:
            return pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, self._redis,
                                                 namespace=f"{self.prefix}breaker:{name}")
        except redis.RedisError:
            return None


def _memory_storage(view: _View) -> pybreaker.CircuitMemoryStorage:
    """In-process storage that carries on from the last shared state seen."""
    storage = pybreaker.CircuitMemoryStorage(view.state)
    if view.opened_at is not None:
        storage.opened_at = datetime.fromtimestamp(view.opened_at, UTC)
    for _ in range(view.failures):
        storage.increment_counter()
    return storage
