"""Admission control: a fixed number of requests in flight and a short, bounded wait queue.

Excess load is refused at once with 429 and Retry-After instead of piling up behind a slow model,
where it would only time out later and hold memory meanwhile.
"""

from __future__ import annotations

import asyncio
import math

from gateway.errors import OVERLOADED, GatewayError
from gateway.telemetry import Metrics


class AdmissionControl:
    """`await enter()` before handling a request (raises the coded 429), `leave()` once its response
    has ended, streams included."""

    def __init__(self, max_concurrency: int, max_queue: int, queue_timeout_s: float, metrics: Metrics) -> None:
        self.slots = asyncio.Semaphore(max_concurrency)
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.queued = 0
        self.metrics = metrics
        self.retry_after = str(max(1, math.ceil(queue_timeout_s)))

    async def enter(self) -> None:
        if not await self._admit():
            self.metrics.rejected.inc()
            raise GatewayError(OVERLOADED, headers={"Retry-After": self.retry_after})
        self.metrics.in_flight.inc()

    def leave(self) -> None:
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
