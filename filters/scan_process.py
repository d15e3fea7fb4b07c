"""Blacklist scans of long texts in a process of their own, at a lower OS priority.

A scan is mostly pure-Python and regex work, and some of its steps are single C calls that hold the GIL
for as long as the text is long (over 500,000 characters: a regex pass of ~100 ms, a join of ~80 ms).
On a thread of the gateway's process such a call stalls the event loop, and with it every other
request, for its whole length, whatever the thread's priority. In another process it holds that
process's GIL only, and the OS, seeing a lower priority, gives the CPU to the gateway's own work first:
a client that sends megabyte prompts waits for its scans, the others do not.

The gateway sends it the texts of heavy requests only (gateway/request_texts.py), whose stages all run
at a lower priority: they pay for their size in their own latency. One worker process, spawned (not
forked: the gateway has threads; so, as with any spawned process, a script that uses the pipeline
itself needs the `if __name__ == "__main__":` guard), on the first such text, which therefore waits for
it to start and to compile the rules (about 3 s here). It keeps the last few rule sets compiled, so a
scan then costs the text's pickling (a few milliseconds for a megabyte) and the rules' (~30 KB for the
default policy). If the worker dies, the scan is retried in a new one; after MAX_WORKER_FAILURES
deaths the process is given up on and texts are scanned on a thread: none goes unscanned.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from filters.blacklist import Blacklist, Match, Rule

# How much less CPU background work (this worker, the classifier's background lane) gets when the CPUs
# are contended: at niceness 10 the Linux scheduler weighs it about a tenth of normal work.
BACKGROUND_NICENESS = 10
WORKER_KEPT_RULE_SETS = 4
MAX_WORKER_FAILURES = 3

_compiled: OrderedDict[tuple[Rule, ...], Blacklist] = OrderedDict()  # in the worker: the last rule sets


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Raise the calling thread's niceness by `niceness` (on Linux a thread has its own; elsewhere it
    would lower the whole process, so this does nothing there)."""
    if niceness and sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + niceness)


def _scan(rules: tuple[Rule, ...], texts: list[str]) -> list[list[Match]]:
    """Run in the worker: each text scanned under `rules`, compiled once per rule set."""
    blacklist = _compiled.get(rules)
    if blacklist is None:
        blacklist = _compiled[rules] = Blacklist(list(rules))
        while len(_compiled) > WORKER_KEPT_RULE_SETS:
            _compiled.popitem(last=False)
    else:
        _compiled.move_to_end(rules)
    return _scan_each(blacklist, texts)


def _scan_each(blacklist: Blacklist, texts: list[str]) -> list[list[Match]]:
    return [blacklist.scan(text) for text in texts]


class ScanProcess:
    """`await scans.scan(blacklist, rules, texts)`: `blacklist.scan(text)` of each text, computed in the
    worker process (`rules`: those `blacklist` was built from, which the worker compiles once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the gateway's loop, and a CLI's, may both start the worker
        self._pool: ProcessPoolExecutor | None = None
        self._failures = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blacklist-scan")

    async def scan(self, blacklist: Blacklist, rules: tuple[Rule, ...], texts: list[str]) -> list[list[Match]]:
        loop = asyncio.get_running_loop()
        while (pool := self._worker()) is not None:
            try:
                return await loop.run_in_executor(pool, _scan, rules, texts)
            except BrokenProcessPool:
                self._discard(pool)
        return await self.on_thread(blacklist, texts)

    async def on_thread(self, blacklist: Blacklist, texts: list[str]) -> list[list[Match]]:
        """The scans on a thread of this process: off the event loop, but sharing its GIL."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, _scan_each, blacklist, texts)

    def _worker(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._pool is None and self._failures < MAX_WORKER_FAILURES:
                spawn = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(1, spawn, initializer=lower_thread_priority)
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget a worker that died: the next scan starts another."""
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
            self._failures += 1
        pool.shutdown(wait=False, cancel_futures=True)


scan_process = ScanProcess()
