"""Where audit records live: SQLite (WAL, the embedded default) or PostgreSQL (many replicas).

Both backends share one schema and one set of statements; they differ in how a writer takes the
chain's lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so that
any number of gateway processes append to one chain. Sequence numbers and hashes are assigned inside
that locked transaction: chain order is commit order. Schema changes are numbered migrations,
applied once, under the same lock.

Two kinds of failure are told apart: the store failing (StoreError: unreachable, locked, out of space)
and the store refusing what a record holds (RecordRejected: a constraint, a value it cannot keep). The
writer retries the first later; the second would fail the same way again.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from privacy.audit.record import (
    GENESIS_HASH,
    AuditRecord,
    SubjectKey,
    canonical,
    chain_hash,
    new_record,
    stored_request_id,
)
from privacy.audit.signing import Signer, checkpoint_message
from privacy.files import private_sqlite

# Columns copied out of the chained body so that queries can use indexes; verify checks they agree.
INDEXED_FIELDS = ("kind", "at", "tenant", "key_id", "route", "decision", "category", "rule_id", "error_code", "event",
                  "request_id")

# Statements name dialect-specific parts in braces (see AuditStore.dialect).
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE audit_records (
            seq {sequence_key},
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            tenant TEXT, key_id TEXT, route TEXT, decision TEXT, category TEXT, rule_id TEXT,
            error_code TEXT, event TEXT,
            body TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL)""",
        "CREATE INDEX audit_records_at ON audit_records (at)",
        "CREATE INDEX audit_records_tenant_at ON audit_records (tenant, at)",
        """CREATE TABLE audit_texts (
            record_id TEXT NOT NULL,
            role TEXT NOT NULL,
            text TEXT,
            salt TEXT NOT NULL,
            subject TEXT,
            expires_at DOUBLE PRECISION,
            PRIMARY KEY (record_id, role)){clustered}""",
        "CREATE INDEX audit_texts_subject ON audit_texts (subject)",
        "CREATE INDEX audit_texts_expires ON audit_texts (expires_at)",
        """CREATE TABLE audit_checkpoints (
            seq BIGINT PRIMARY KEY,
            hash TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            algorithm TEXT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL)""",
    ]),
    # Records are the gateway's own (`id`); the client's request id, which many records may carry, is a
    # column of its own. Records written before keep it as their id and leave this column empty.
    (2, [
        "ALTER TABLE audit_records ADD COLUMN request_id TEXT",
        "CREATE INDEX audit_records_request_id ON audit_records (request_id)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Any 64-bit number works; this one spells "WARDGATE" so that pg_locks shows whose lock it is.
_PG_LOCK_KEY = 0x5741524447415445


class StoreError(Exception):
    """The store cannot be reached or used; worded for the operator."""


class RecordRejected(StoreError):
    """The store works, but refuses what these records hold (a constraint, a value it cannot keep):
    trying again will not help."""


@dataclass(frozen=True)
class CheckpointPolicy:
    every_records: int = 1000
    every_s: float = 60.0


@dataclass(frozen=True)
class AuditFilter:
    since: float | None = None
    until: float | None = None
    tenant: str | None = None
    decision: str | None = None
    category: str | None = None
    rule_id: str | None = None
    request_id: str | None = None
    kind: str | None = None
    text: str | None = None  # substring of a stored (redacted) prompt or completion
    after_seq: int | None = None  # paging: records after this one
    before_seq: int | None = None


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    body: dict[str, Any]  # {} when the stored text is not a JSON record (it was edited: verify says so)
    raw_body: str  # exactly as stored: what the hash covers
    prev_hash: str
    hash: str
    columns: dict[str, Any]
    texts: dict[str, dict[str, Any]]  # role -> {text, salt, subject, expires_at}

    def as_dict(self) -> dict[str, Any]:
        """For query output: the record, its chain position, and the stored texts (not the salts)."""
        texts = {role: row["text"] for role, row in self.texts.items()}
        body = self.body or {"unreadable_body": self.raw_body[:200]}  # edited outside wardgate; verify names it
        return {"seq": self.seq, **body, "stored_texts": texts, "hash": self.hash}


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: float
    algorithm: str
    key_id: str
    signature: str


def open_store(dsn: str) -> AuditStore:
    """`postgresql://...` (or `postgres://`), else a SQLite file path (`sqlite:///path` also accepted)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresStore(dsn)
    return SQLiteStore(Path(dsn.removeprefix("sqlite://")))


class AuditStore:
    """One connection, used by one thread at a time (the writer's, or a CLI's)."""

    placeholder = "?"
    describe = ""
    dialect: dict[str, str] = {}

    def __init__(self) -> None:
        self._connection: Any = None

    # -- dialect -------------------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin_locked(self, cursor: Any) -> None:
        raise NotImplementedError

    def _bucket_expression(self) -> str:
        raise NotImplementedError

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _record_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's errors that mean "not this data" rather than "not now"."""
        raise NotImplementedError

    # -- plumbing ------------------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def connection(self) -> Any:
        if self._connection is None:
            try:
                self._connection = self._connect()
            except self._connection_errors() as exc:
                raise StoreError(f"cannot open the audit store {self.describe}: {exc}") from None
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    @contextmanager
    def _transaction(self, locked: bool = False) -> Iterator[Any]:
        """A cursor in one transaction; with `locked`, the chain's writer lock is held until commit.
        Any failure rolls back, drops the connection (the next call reconnects) and raises StoreError."""
        connection = self.connection()
        cursor = connection.cursor()
        try:
            if locked:
                self._begin_locked(cursor)
            else:
                cursor.execute("BEGIN")
            yield cursor
            connection.commit()
        except (*self._record_errors(), orjson.JSONEncodeError, UnicodeEncodeError) as exc:
            self._abandon()
            raise RecordRejected(f"the audit store {self.describe} refused the record: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        except self._connection_errors() as exc:
            self._abandon()
            raise StoreError(f"audit store {self.describe}: {exc}") from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        try:
            if self._connection is not None:
                self._connection.rollback()
        except Exception:  # noqa: S110 - the connection is being thrown away anyway
            pass
        self.close()

    def _execute(self, cursor: Any, statement: str, parameters: tuple | list = ()) -> Any:
        cursor.execute(self._sql(statement), parameters)
        return cursor

    # -- schema --------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply the migrations this store lacks; returns the schema version."""
        with self._transaction(locked=True) as cursor:
            self._execute(cursor, "CREATE TABLE IF NOT EXISTS audit_schema "
                                  "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            current = self._execute(cursor, "SELECT MAX(version) FROM audit_schema").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(f"the audit store {self.describe} has schema version {current}, newer than this "
                                 f"wardgate ({SCHEMA_VERSION}): upgrade wardgate")
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        self._execute(cursor, statement.format(**self.dialect))
                    self._execute(cursor, "INSERT INTO audit_schema (version, applied_at) VALUES (?, ?)",
                                  (version, time.time()))
        return SCHEMA_VERSION

    # -- writing -------------------------------------------------------------------------------
    def append(self, records: list[AuditRecord], signer: Signer, checkpoints: CheckpointPolicy,
               replay: bool = False) -> int:
        """Chain and commit `records` in one transaction. With `replay` (a spill file that may have
        been replayed in part before a crash), records already stored as they are are skipped.
        Returns the chain's new head sequence number."""
        with self._transaction(locked=True) as cursor:
            return self._append_locked(cursor, records, signer, checkpoints, replay)

    def _append_locked(self, cursor: Any, records: list[AuditRecord], signer: Signer,
                       checkpoints: CheckpointPolicy, replay: bool = False) -> int:
        now = time.time()
        head = self._execute(cursor, "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
        seq, head_hash = head if head is not None else (0, GENESIS_HASH)
        # Replay: the records already stored, by id, with their bodies.
        stored = self._stored_bodies(cursor, [*(r.id for r in records), *(r.content_id() for r in records)]) \
            if replay else {}
        record_rows, text_rows = [], []
        for record in records:
            body = canonical(record.chained_body())
            if "request_id" not in record.body and stored.get(record.id, body) != body:
                # Spilled before records had ids of their own: its id is a client's, and another record has it.
                record.take_content_id()
                body = canonical(record.chained_body())
            if stored.get(record.id) == body:
                continue  # stored by a replay cut short, or by a commit that landed after its request gave up
            if replay:
                # Anything else under a stored id is left to the unique key: refused, never skipped unseen.
                stored[record.id] = body
            seq, prev_hash = seq + 1, head_hash
            head_hash = chain_hash(prev_hash, body)
            record_rows.append((seq, record.id, *(record.body.get(name) for name in INDEXED_FIELDS),
                                body, prev_hash, head_hash))
            text_rows += [(record.id, text.role, text.text, text.salt, text.subject, text.expires_at)
                          for text in record.texts]
        if record_rows:
            cursor.executemany(self._sql(
                f"INSERT INTO audit_records (seq, id, {', '.join(INDEXED_FIELDS)}, body, prev_hash, hash) "
                f"VALUES ({','.join('?' * (len(INDEXED_FIELDS) + 5))})"), record_rows)
        if text_rows:
            cursor.executemany(self._sql(
                "INSERT INTO audit_texts (record_id, role, text, salt, subject, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)"), text_rows)
        if record_rows and self._checkpoint_due(cursor, seq, now, checkpoints):
            self._insert_checkpoint(cursor, seq, head_hash, now, signer)
        return seq

    def holds(self, record_id: str) -> bool:
        with self._transaction() as cursor:
            return self._execute(cursor, "SELECT 1 FROM audit_records WHERE id = ?", (record_id,)).fetchone() \
                is not None

    def _stored_bodies(self, cursor: Any, ids: list[str]) -> dict[str, str]:
        rows = self._execute(cursor, f"SELECT id, body FROM audit_records WHERE id IN ({','.join('?' * len(ids))})",
                             ids).fetchall()
        return {row[0]: row[1] for row in rows}

    def _checkpoint_due(self, cursor: Any, seq: int, now: float, policy: CheckpointPolicy) -> bool:
        last = self._execute(cursor, "SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        return last is None or seq - last[0] >= policy.every_records or now - last[1] >= policy.every_s

    def _insert_checkpoint(self, cursor: Any, seq: int, head_hash: str, now: float, signer: Signer) -> None:
        at = round(now, 6)
        signature = signer.sign(checkpoint_message(seq, head_hash, at))
        self._execute(cursor, "INSERT INTO audit_checkpoints (seq, hash, at, algorithm, key_id, signature) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (seq, head_hash, at, signer.algorithm, signer.key_id,
                                                             signature))

    def checkpoint_now(self, signer: Signer) -> Checkpoint | None:
        """Sign the current head, unless it is already the last checkpoint (`wardgate audit checkpoint`,
        and the writer on shutdown, so that the newest records are pinned too)."""
        now = time.time()
        with self._transaction(locked=True) as cursor:
            head = self._execute(cursor, "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
            if head is None:
                return None
            last = self._execute(cursor, "SELECT MAX(seq) FROM audit_checkpoints").fetchone()[0]
            if last != head[0]:
                self._insert_checkpoint(cursor, head[0], head[1], now, signer)
            row = self._execute(cursor, "SELECT seq, hash, at, algorithm, key_id, signature FROM audit_checkpoints "
                                        "ORDER BY seq DESC LIMIT 1").fetchone()
        return Checkpoint(*row)

    def erase_subject(self, subject: str, subject_key: SubjectKey, signer: Signer,
                      checkpoints: CheckpointPolicy) -> tuple[int, int]:
        """Remove the stored texts (and their salts) of one data subject and chain an `erasure` event
        naming the subject by its pseudonym, in one transaction: no erasure goes unrecorded. Texts are
        found by the pseudonym, and by the subject itself where records from before pseudonyms keep it.
        Returns (texts removed, the event's sequence number)."""
        pseudonym = subject_key.pseudonym(subject)
        with self._transaction(locked=True) as cursor:
            removed = self._execute(cursor, "DELETE FROM audit_texts WHERE subject IN (?, ?)",
                                    (pseudonym, subject)).rowcount
            event = new_record("event", event="erasure", subject=pseudonym, texts_removed=removed)
            return removed, self._append_locked(cursor, [event], signer, checkpoints)

    def purge_expired(self, now: float | None = None) -> int:
        """Remove the stored texts whose retention has run out; returns how many."""
        with self._transaction() as cursor:
            return self._execute(cursor, "DELETE FROM audit_texts WHERE expires_at < ?",
                                 (time.time() if now is None else now,)).rowcount

    # -- reading -------------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        with self._transaction() as cursor:
            row = self._execute(cursor, "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row is not None else (0, GENESIS_HASH)

    def checkpoints(self) -> list[Checkpoint]:
        with self._transaction() as cursor:
            rows = self._execute(cursor, "SELECT seq, hash, at, algorithm, key_id, signature FROM audit_checkpoints "
                                         "ORDER BY seq").fetchall()
        return [Checkpoint(*row) for row in rows]

    def query(self, where: AuditFilter, limit: int = 100, newest_first: bool = False) -> list[StoredRecord]:
        conditions, parameters = _conditions(where)
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT seq, body, prev_hash, hash, {', '.join(INDEXED_FIELDS)} FROM audit_records r "
               f"{'WHERE ' + ' AND '.join(conditions) if conditions else ''} ORDER BY seq {order} LIMIT ?")
        with self._transaction() as cursor:
            rows = self._execute(cursor, sql, [*parameters, limit]).fetchall()
            return self._with_texts(cursor, rows)

    def scan(self, after_seq: int = 0, page: int = 1000) -> Iterator[StoredRecord]:
        """Every record in chain order, a page per transaction (for verify and export)."""
        while True:
            records = self.query(AuditFilter(after_seq=after_seq), page)
            yield from records
            if len(records) < page:
                return
            after_seq = records[-1].seq

    def orphan_texts(self) -> list[tuple[str, str]]:
        """(record id, role) of stored texts that belong to no record: written outside the chain."""
        with self._transaction() as cursor:
            return [tuple(row) for row in self._execute(
                cursor, "SELECT t.record_id, t.role FROM audit_texts t LEFT JOIN audit_records r "
                        "ON r.id = t.record_id WHERE r.id IS NULL ORDER BY t.record_id").fetchall()]

    def _with_texts(self, cursor: Any, rows: list[tuple]) -> list[StoredRecord]:
        bodies = [_parsed_body(row[1]) for row in rows]
        texts: dict[str, dict[str, dict[str, Any]]] = {}
        ids = [body["id"] for body in bodies if body]
        if ids:
            for record_id, role, text, salt, subject, expires_at in self._execute(
                    cursor, f"SELECT record_id, role, text, salt, subject, expires_at FROM audit_texts "
                            f"WHERE record_id IN ({','.join('?' * len(ids))})", ids).fetchall():
                texts.setdefault(record_id, {})[role] = {"text": text, "salt": salt, "subject": subject,
                                                          "expires_at": expires_at}
        return [StoredRecord(row[0], body, row[1], row[2], row[3], dict(zip(INDEXED_FIELDS, row[4:], strict=True)),
                             texts.get(body.get("id"), {})) for row, body in zip(rows, bodies, strict=True)]

    def stats(self, where: AuditFilter, bucket_s: int, by: str) -> list[tuple[float, str | None, int]]:
        """(bucket start, value of column `by`, count) over the records matching `where`."""
        if by not in ("decision", "category", "tenant", "rule_id", "kind", "error_code"):
            raise ValueError(f"cannot group by {by!r}")
        conditions, parameters = _conditions(where)
        bucket = self._bucket_expression()
        sql = (f"SELECT {bucket} AS bucket, {by}, COUNT(*) FROM audit_records r "
               f"{'WHERE ' + ' AND '.join(conditions) if conditions else ''} "
               f"GROUP BY bucket, {by} ORDER BY bucket, {by}")
        with self._transaction() as cursor:
            rows = self._execute(cursor, sql, [bucket_s, *parameters]).fetchall()
        return [(float(row[0]) * bucket_s, row[1], int(row[2])) for row in rows]


def _parsed_body(raw: str) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) and isinstance(body.get("id"), str) else {}


def _conditions(where: AuditFilter) -> tuple[list[str], list[Any]]:
    conditions, parameters = [], []
    for column, operator, value in (
        ("at", ">=", where.since), ("at", "<", where.until), ("tenant", "=", where.tenant),
        ("decision", "=", where.decision), ("category", "=", where.category), ("rule_id", "=", where.rule_id),
        ("kind", "=", where.kind), ("seq", ">", where.after_seq), ("seq", "<", where.before_seq),
    ):
        if value is not None:
            conditions.append(f"r.{column} {operator} ?")
            parameters.append(value)
    if where.request_id is not None:
        # Records from before the column was added hold the client's request id as their own id.
        conditions.append("(r.request_id = ? OR (r.request_id IS NULL AND r.id = ?))")
        parameters += [stored_request_id(where.request_id), where.request_id]
    if where.text:
        escaped = where.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append("EXISTS (SELECT 1 FROM audit_texts t WHERE t.record_id = r.id "
                          "AND t.text LIKE ? ESCAPE '\\')")
        parameters.append(f"%{escaped}%")
    return conditions, parameters


class SQLiteStore(AuditStore):
    # The sequence number as the rowid and the texts clustered by their key: one B-tree each instead
    # of two, which is most of an insert's cost.
    dialect = {"sequence_key": "INTEGER PRIMARY KEY", "clustered": " WITHOUT ROWID"}

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.describe = str(path)

    def _connect(self) -> sqlite3.Connection:
        private_sqlite(self.path)
        connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced, WAL included. A record is acknowledged only once it is on disk.
        connection.execute("PRAGMA synchronous=FULL")
        # The default LIKE is case-insensitive for ASCII only; text search should treat all text alike.
        connection.execute("PRAGMA case_sensitive_like=ON")
        return connection

    def _begin_locked(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute("BEGIN IMMEDIATE")  # the database's single writer lock, held to commit

    def _bucket_expression(self) -> str:
        return "CAST(r.at / ? AS INTEGER)"

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error, OSError)

    def _record_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.IntegrityError, sqlite3.DataError)


class PostgresStore(AuditStore):
    placeholder = "%s"
    dialect = {"sequence_key": "BIGINT PRIMARY KEY", "clustered": ""}

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.describe = _without_password(dsn)

    def _connect(self) -> Any:
        import psycopg  # only deployments with PostgreSQL pay for the import

        return psycopg.connect(self.dsn, connect_timeout=5, autocommit=True)

    def _begin_locked(self, cursor: Any) -> None:
        cursor.execute("BEGIN")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))

    def _bucket_expression(self) -> str:
        return "FLOOR(r.at / %s)::bigint"

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error, OSError)

    def _record_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.IntegrityError, psycopg.DataError)


def _without_password(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
