"""Admission control: a fixed number of requests in flight and a short, bounded wait queue.

Excess load is refused at once with 429 and Retry-After instead of piling up behind a slow model,
where it would only time out later and hold memory meanwhile.
"""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import OVERLOADED, GatewayError, error_response
from gateway.telemetry import Metrics

_LIMITED_PREFIX = "/v1/"


class ConcurrencyLimit:
    """ASGI middleware. A slot is held until the response ends, streams included."""

    def __init__(
        self, app: ASGIApp, max_concurrency: int, max_queue: int, queue_timeout_s: float, metrics: Metrics
    ) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(max_concurrency)
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.queued = 0
        self.metrics = metrics
        self.retry_after = str(max(1, math.ceil(queue_timeout_s)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_LIMITED_PREFIX):
            await self.app(scope, receive, send)
            return
        if not await self._admit():
            self.metrics.rejected.inc()
            error = GatewayError(OVERLOADED, headers={"Retry-After": self.retry_after})
            await error_response(scope, error)(scope, receive, send)
            return
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.in_flight.dec()
            self.slots.release()

    async def _admit(self) -> bool:
        if not self.slots.locked():
            await self.slots.acquire()  # a free slot: returns without suspending
            return True
        if self.queued >= self.max_queue:
            return False
        self.queued += 1
        self.metrics.queued.inc()
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self.slots.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self.queued -= 1
            self.metrics.queued.dec()
