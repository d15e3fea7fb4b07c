"""Group commit: records are queued, and one thread commits whatever has gathered in one transaction.

A request awaits its record's commit before its response completes, so an acknowledged response
always has a committed record; many requests share one fsync. The queue is bounded. When the store
is down or cannot keep up, each record's policy decides:

- `spill`: the record is appended to a local spill file and fsynced before it is acknowledged; the
  file is replayed into the store, in order and before any newer record, once the store answers
  again (also at the next start, by whichever process finds it unlocked). Replay skips records the
  store already has, so a crash mid-replay duplicates nothing.
- `fail_closed`: the commit raises `AuditUnavailable`; the gateway answers 503 instead of a response
  it could not record.

A record the store refuses for what it holds (RecordRejected: a constraint, a value it cannot keep)
is not the store failing: it never costs the other records of its batch anything, nor counts against
the breaker. The batch is appended again one record at a time, and a record refused on its own is a
dead letter: kept whole in a file of its own beside the spill files (never replayed: it would be
refused again), logged (`audit_record_dead_lettered`), counted, and an `audit_record_rejected` event
naming it is chained in its place, which `wardgate audit verify` reports. Its request is answered as
for a spill, or refused under `fail_closed`. No record is ever dropped without a trace.

A commit that takes longer than `commit_timeout_s` (a lock held on the store, a stalled network)
counts as the store failing, so that no request waits on the audit log without bound.

Whether the store is worth trying is a pybreaker circuit breaker's call. Closed: each commit tries
the store, and a failed one (an error, or a commit that outlasted `commit_timeout_s`, even if it
landed) counts. After `breaker_fail_max` failures in a row it opens: records spill or are refused at
once, without touching the store. After `breaker_reset_s` it half-opens and one attempt probes the
store (the next commit, or the writer itself when no request comes): success closes it and the spill
is replayed first, failure opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import orjson
import pybreaker
import structlog

from filters.pii import redact_pii
from privacy.audit.record import AuditRecord, SubjectKey, rejection_event
from privacy.audit.signing import Signer
from privacy.audit.store import AuditStore, CheckpointPolicy, RecordRejected, StoreError
from privacy.files import fsync_directory, open_private, private_directory, write_once

log = structlog.get_logger("wardgate.audit")

_STOP = object()


class AuditUnavailable(Exception):
    """The record could not be committed or spilled, and its policy says fail closed."""


class AuditObserver(Protocol):
    """What the writer reports, for metrics."""

    def committed(self, records: int, seconds: float) -> None: ...

    def spilled(self, records: int) -> None: ...

    def failed(self, records: int) -> None: ...

    def dead_lettered(self, records: int) -> None:
        """Records the store refused on their own, kept in dead-letter files."""

    def breaker_changed(self, state: str) -> None:
        """The store's circuit breaker went to `state`: closed, open or half-open."""


@dataclass(frozen=True)
class WriterSettings:
    queue_size: int = 10_000
    batch_max: int = 512
    # Longest wait for more records once a batch has begun, when requests come concurrently.
    group_window_s: float = 0.002
    # Longest a request waits for its record's commit before the record is spilled (or refused).
    commit_timeout_s: float = 5.0
    # Failed commits in a row that open the store's circuit breaker.
    breaker_fail_max: int = 3
    # How long it stays open (records spill or are refused at once) before one attempt probes the store.
    breaker_reset_s: float = 1.0
    purge_every_s: float = 3600.0
    checkpoints: CheckpointPolicy = CheckpointPolicy()


class _CommitStalled(Exception):
    """The records were committed, but later than `commit_timeout_s`: the breaker counts a failure."""


class _BreakerReport(pybreaker.CircuitBreakerListener):
    def __init__(self, observer: AuditObserver | None) -> None:
        self.observer = observer

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        log.warning("breaker_state", breaker=cb.name, state=new_state.name,
                    previous=old_state.name if old_state is not None else None)
        if self.observer is not None:
            self.observer.breaker_changed(new_state.name)


class SpillFile:
    """This process's spill segments: append-only files, each locked (flock) while this process holds
    it, so that no other process replays it under our feet. Taking the spilled records for replay
    seals the current segment: records spilled meanwhile go to a new one, and only the segments taken
    are removed once their records are committed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._segments: list[tuple[Path, IO[bytes]]] = []  # oldest first; the last one takes appends
        self._sealed = True
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        return self._segments[-1][0] if self._segments else None

    @property
    def waiting(self) -> bool:
        """Whether spilled records wait for replay."""
        return bool(self._segments)

    def append(self, records: list[AuditRecord]) -> None:
        with self._lock:
            if self._sealed:
                self._segments.append(self._new_segment())
                self._sealed = False
            file = self._segments[-1][1]
            file.write(b"".join(record.to_json() + b"\n" for record in records))
            file.flush()
            os.fsync(file.fileno())

    def _new_segment(self) -> tuple[Path, IO[bytes]]:
        # Created under a name the leftover scan ignores, locked, then renamed: another process never
        # sees it unlocked.
        private_directory(self.directory)
        name = f"spill-{os.getpid()}-{time.time_ns()}.jsonl"
        temporary = self.directory / f".{name}.new"
        file = os.fdopen(open_private(temporary, os.O_WRONLY | os.O_APPEND | os.O_EXCL), "ab")
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        temporary.rename(self.directory / name)
        fsync_directory(self.directory)  # the segment's name survives a power cut, as its fsynced lines do
        return self.directory / name, file

    def take(self) -> tuple[list[AuditRecord], Callable[[], None]]:
        """Everything spilled so far, and a function that removes it once it is committed."""
        with self._lock:
            taken = list(self._segments)
            self._sealed = True
        records = [record for path, _ in taken for record in _read_spill(path)]

        def discard() -> None:
            with self._lock:
                for path, file in taken:
                    path.unlink(missing_ok=True)
                    file.close()
                    self._segments.remove((path, file))

        return records, discard


def _read_spill(path: Path) -> list[AuditRecord]:
    records = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(AuditRecord.from_json(line))
        except (ValueError, KeyError, TypeError):
            # Only a crash in the middle of a write leaves a torn line, and that record was never
            # acknowledged (acknowledgement follows the fsync).
            log.warning("audit_spill_torn_line", file=str(path), line=number)
    return records


def leftover_spill_files(directory: Path) -> list[Path]:
    """Spill files no running process holds (left by a crash or a shutdown with the store down)."""
    if not directory.is_dir():
        return []
    free = []
    for path in sorted(directory.glob("spill-*.jsonl")):
        with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            free.append(path)
    return free


def replay_leftovers(directory: Path, replay: Callable[[list[AuditRecord]], None]) -> int:
    """Replay and remove every spill file no running process holds, holding each file's lock from
    the check to its removal so that two starting processes never replay the same file twice."""
    replayed = 0
    for path in leftover_spill_files(directory):
        with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if not path.exists():  # another process replayed it between the scan and the lock
                continue
            records = _read_spill(path)
            replay(records)
            path.unlink()
            replayed += len(records)
            log.info("audit_spill_replayed", file=str(path), records=len(records))
    return replayed


# Ids the gateway makes are hex; an older record's id came from the client and names no file as it is.
_FILE_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class DeadLetters:
    """Records the store refused on their own: each kept whole, with why, in `dead-letter-<id>.json`
    beside the spill files. Never replayed; an operator reads them (`wardgate audit verify` names them)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, record: AuditRecord) -> Path:
        name = record.id if _FILE_SAFE_ID.fullmatch(record.id) else hashlib.sha256(record.id.encode()).hexdigest()
        return self.directory / f"dead-letter-{name}.json"

    def keep(self, record: AuditRecord, error: str) -> bool:
        """Write the record's file (fsynced); False if an earlier try of the same replay wrote it already."""
        private_directory(self.directory)
        return write_once(self.path(record),
                          orjson.dumps({"error": error, "record": orjson.Fragment(record.to_json())}) + b"\n")


class AuditWriter:
    def __init__(self, store: AuditStore, signer: Signer, spill_dir: Path, settings: WriterSettings,
                 observer: AuditObserver | None = None, subject_key: SubjectKey | None = None) -> None:
        self.store = store
        self.signer = signer
        self.settings = settings
        self.observer = observer
        # What records name their data subject by (see privacy/audit/record.py); None where nobody sets one.
        self.subject_key = subject_key
        self.spill = SpillFile(spill_dir)
        self.dead_letters = DeadLetters(spill_dir)
        self.spill_dir = spill_dir
        self._queue: queue.Queue = queue.Queue(settings.queue_size)
        self._thread: threading.Thread | None = None
        # Per process, in memory, even where the gateway's other breakers share their state in Redis:
        # each writer sees the store through its own connection, and one replica's broken network
        # path must not stop the others from writing. Only the writer thread calls through it.
        self._breaker_storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker_fail_max, reset_timeout=settings.breaker_reset_s,
            state_storage=self._breaker_storage, listeners=[_BreakerReport(observer)], name="audit",
            # The failure itself propagates on the trip, not a CircuitBreakerError.
            throw_new_error_on_trip=False,
        )
        # Set by a request whose commit timed out, cleared by the writer when a commit completes.
        self._stalled = False
        self._last_purge = time.monotonic()
        # The last failed attempt's error and since when attempts fail (for the log); None once one succeeds.
        self.last_error: str | None = None
        self._failing_since = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Migrate the schema and replay leftover spill files; raises StoreError if the store is down
        (the gateway then refuses to start rather than run without its audit trail)."""
        self.store.migrate()
        replay_leftovers(self.spill_dir, self._append_replayed)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is queued, sign the head, stop. Blocking: call it from a thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        with contextlib.suppress(StoreError):
            self._replay_spill()
            self.store.checkpoint_now(self.signer)
        self.store.close()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def breaker_state(self) -> str:
        """closed, open or half-open. An open breaker reads open until its next attempt, even once
        its reset timeout has passed."""
        return self._breaker_storage.state

    @property
    def store_up(self) -> bool:
        return self.last_error is None and self.breaker_state == pybreaker.STATE_CLOSED

    def describe(self) -> dict:
        """The store's state as the writer last saw it, for /readyz (not its error: the probe is open
        to anyone, and the error names files and hosts; the log has it)."""
        state = "down" if not self.store_up else "hanging" if self._stalled else "up"
        return {"store": state, "breaker": self.breaker_state, "queue_depth": self.queue_depth,
                "spilled_waiting": self.spill.waiting}

    # -- the event loop's side -----------------------------------------------------------------
    async def commit(self, record: AuditRecord) -> None:
        """Returns once the record is committed (or spilled, if its policy allows); raises
        AuditUnavailable otherwise."""
        if self._stalled:
            # A commit is hanging: do not make this request wait out the timeout as well.
            await self._overflow(record, "the audit store is not committing (a commit is hanging)")
            return
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((record, future))
        except queue.Full:
            await self._overflow(record, "the audit queue is full")
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), self.settings.commit_timeout_s)
        except TimeoutError:
            # A store that hangs (a lock held, a stalled network) must not hang the request. The
            # writer skips the record from now on; if its commit was already under way and lands,
            # the spilled copy is skipped on replay (same id). Until a commit completes, later
            # records take the same way at once.
            record.withdrawn = True
            self._stalled = True
            await self._overflow(record, f"the audit store did not commit within {self.settings.commit_timeout_s} s")

    async def _overflow(self, record: AuditRecord, reason: str) -> None:
        """The store cannot keep up: spill the record, or refuse per its policy."""
        if record.on_store_failure == "fail_closed":
            self._count("failed", 1)
            raise AuditUnavailable(reason)
        try:
            await asyncio.to_thread(self.spill.append, [record])
        except OSError as exc:  # kept nowhere: the client must hear of it
            log.error("audit_spill_failed", error=str(exc), file=str(self.spill.path or self.spill_dir))
            self._count("failed", 1)
            raise AuditUnavailable(f"{reason}, and the spill file cannot be written") from None
        self._count("spilled", 1)

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        concurrent = False
        while True:
            try:
                # While the store fails, wake up to probe it whenever the breaker would let a commit
                # through: spilled records must not wait for the next request to reach the store.
                item = self._queue.get(timeout=None if self.store_up else self._probe_due_in())
            except queue.Empty:
                self._probe()
                continue
            if item is _STOP:
                return
            batch = [item]
            # Under concurrency (the last batch had company) wait up to group_window_s for more records:
            # a transaction's fixed cost is most of a small batch's. A lone writer never waits.
            deadline = time.monotonic() + (self.settings.group_window_s if concurrent else 0.0)
            while len(batch) < self.settings.batch_max:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) \
                        if concurrent else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._commit(batch)
                    return
                batch.append(item)
            concurrent = len(batch) > 1
            self._commit(batch)
            self._purge_if_due()

    def _commit(self, batch: list[tuple[AuditRecord, asyncio.Future]]) -> None:
        batch = [(record, future) for record, future in batch if not record.withdrawn]
        if not batch:
            return
        records = [record for record, _ in batch]
        started = time.perf_counter()
        refused: list[AuditRecord] = []  # filled by _append: the records the store refused on their own
        error = self._attempt(lambda: self._append(records, refused))
        if error is not None:
            self._spill_or_refuse(batch, error)
            return
        dead = {id(record) for record in refused}
        self._count("committed", len(records) - len(dead), time.perf_counter() - started)
        _resolve([future for record, future in batch if id(record) not in dead], None)
        if dead:
            # Kept in their dead-letter files and reported: answered as a spilled record is, or refused.
            _resolve([future for record, future in batch if id(record) in dead and record.on_store_failure == "spill"],
                     None)
            closed = [future for record, future in batch if id(record) in dead and record.on_store_failure != "spill"]
            self._count("failed", len(closed))
            _resolve(closed, AuditUnavailable("the audit store refused the record; it is kept in a dead-letter file"))

    def _attempt(self, store_work: Callable[[], None]) -> str | None:
        """Run `store_work` through the breaker. None when its work is done (if late, the breaker
        counted a failure), else why not: the store's error, or the open breaker (then the store was
        not touched)."""
        try:
            self._breaker.call(store_work)
        except _CommitStalled as exc:  # a failure that still did its work: the records stand
            self._attempt_failed(str(exc))
        except pybreaker.CircuitBreakerError:
            return f"the audit store's circuit breaker is open (last error: {self.last_error})"
        except StoreError as exc:
            self._attempt_failed(str(exc))
            return str(exc)
        except Exception as exc:  # a bug must not kill the writer and leave every request hanging
            log.exception("audit_attempt_failed")
            self._attempt_failed(f"{type(exc).__name__}: {exc}")
            return self.last_error
        else:
            self._attempt_succeeded()
        return None

    def _append(self, records: list[AuditRecord], refused: list[AuditRecord]) -> None:
        """Append `records` after the spill; those the store refuses on their own are added to `refused`
        (an out-parameter: a late commit raises _CommitStalled, and they must be known all the same)."""
        # Spilled records are older than these: they go first, so that chain order stays time order.
        self._replay_spill()
        started = time.monotonic()
        refused += self._append_isolating(records, replay=False)
        took = time.monotonic() - started
        if took > self.settings.commit_timeout_s:
            raise _CommitStalled(f"a commit took {took:.3f} s, over commit_timeout_s {self.settings.commit_timeout_s}")

    def _probe_due_in(self) -> float:
        """Seconds until the breaker lets an attempt through: the rest of its reset timeout when
        open, a whole one when it is closed but the last attempt failed."""
        opened_at = self._breaker_storage.opened_at
        if self.breaker_state != pybreaker.STATE_OPEN or opened_at is None:
            return self.settings.breaker_reset_s
        return max(0.0, opened_at.timestamp() + self.settings.breaker_reset_s - time.time())

    def _probe(self) -> None:
        """No request came while the store failed: replay the spill, or just read the chain's head,
        as the breaker's attempt."""
        self._attempt(self._replay_and_ping)

    def _replay_and_ping(self) -> None:
        self._replay_spill()
        self.store.head()

    def _attempt_failed(self, error: str) -> None:
        self._stalled = False  # a hang, if there was one, is over
        if self.last_error is None:
            self._failing_since = time.monotonic()
            log.error("audit_store_unavailable", error=error)
        self.last_error = error

    def _attempt_succeeded(self) -> None:
        self._stalled = False
        if self.last_error is not None:
            log.info("audit_store_recovered", down_s=round(time.monotonic() - self._failing_since, 3))
            self.last_error = None

    def _replay_spill(self) -> None:
        spilled, discard = self.spill.take()
        self._append_replayed(spilled)
        discard()
        if spilled:
            log.info("audit_spill_replayed", records=len(spilled))

    def _append_replayed(self, records: list[AuditRecord]) -> None:
        for start in range(0, len(records), self.settings.batch_max):
            self._append_isolating(records[start:start + self.settings.batch_max], replay=True)

    def _append_isolating(self, records: list[AuditRecord], replay: bool) -> list[AuditRecord]:
        """Append `records` in one transaction. If the store refuses what one of them holds, they are
        appended one at a time, and each refused on its own is dead-lettered; returns those. Raises
        StoreError when the store fails (then nothing of this call is lost: it is all tried again)."""
        try:
            self.store.append(records, self.signer, self.settings.checkpoints, replay=replay)
        except RecordRejected as exc:
            if len(records) > 1:
                return [refused for record in records for refused in self._append_isolating([record], replay)]
            self._dead_letter(records[0], str(exc))
            return records
        return []

    def _dead_letter(self, record: AuditRecord, error: str) -> None:
        error = redact_pii(error)  # a driver's message may quote the value it refused
        path = self.dead_letters.path(record)
        if self.dead_letters.keep(record, error):
            log.error("audit_record_dead_lettered", record_id=record.id, request_id=record.body.get("request_id"),
                      error=error, file=str(path))
            self._count("dead_lettered", 1)
        # A replay tried again after a failure finds the event chained already (its id derives from the record's).
        event = rejection_event(record, error, str(path), socket.gethostname())
        if not self.store.holds(event.id):
            self.store.append([event], self.signer, self.settings.checkpoints)

    def _spill_or_refuse(self, batch: list[tuple[AuditRecord, asyncio.Future]], error: str) -> None:
        spillable = [(record, future) for record, future in batch if record.on_store_failure == "spill"]
        closed = [future for record, future in batch if record.on_store_failure != "spill"]
        if spillable:
            try:
                self.spill.append([record for record, _ in spillable])
            except OSError as exc:
                log.error("audit_spill_failed", error=str(exc), file=str(self.spill.path))
                closed += [future for _, future in spillable]
            else:
                self._count("spilled", len(spillable))
                _resolve([future for _, future in spillable], None)
        if closed:
            self._count("failed", len(closed))
            _resolve(closed, AuditUnavailable(error))

    def _purge_if_due(self) -> None:
        if time.monotonic() - self._last_purge < self.settings.purge_every_s or not self.store_up:
            return
        self._last_purge = time.monotonic()
        try:
            purged = self.store.purge_expired()
        except StoreError as exc:
            log.error("audit_purge_failed", error=str(exc))
            return
        if purged:
            log.info("audit_texts_purged", texts=purged)

    def _count(self, what: str, records: int, seconds: float = 0.0) -> None:
        if self.observer is None:
            return
        if what == "committed":
            self.observer.committed(records, seconds)
        else:
            getattr(self.observer, what)(records)


def _resolve(futures: list[asyncio.Future], error: BaseException | None) -> None:
    """Settle the futures from the writer thread: one wake-up per event loop, not one per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for future in futures:
        by_loop.setdefault(future.get_loop(), []).append(future)

    def settle(waiting: list[asyncio.Future]) -> None:
        for future in waiting:
            if future.done():  # the awaiting request was cancelled (client gone): the record stands anyway
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    for loop, waiting in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, waiting)
